/* A PKCS#11 module for tests: SoftHSM2 (or any module) with a C_Sign that hangs.
 *
 * C_GetFunctionList loads the module named by SHIM_REAL_MODULE and hands out a copy of
 * its function list in which C_Sign first waits while the file named by SHIM_HANG_FILE
 * exists (up to 60 s): a stuck device, exactly where the daemon's token call sits. */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST shim;
static CK_C_Sign real_sign;

static CK_RV hanging_sign(CK_SESSION_HANDLE session, CK_BYTE_PTR data, CK_ULONG length,
                          CK_BYTE_PTR signature, CK_ULONG_PTR signature_length) {
    const char *hang = getenv("SHIM_HANG_FILE");
    for (int i = 0; hang != NULL && i < 6000 && access(hang, F_OK) == 0; i++)
        usleep(10000);
    return real_sign(session, data, length, signature, signature_length);
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list) {
    const char *path = getenv("SHIM_REAL_MODULE");
    void *module = path ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : NULL;
    if (module == NULL)
        return CKR_GENERAL_ERROR;
    CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(module, "C_GetFunctionList");
    CK_FUNCTION_LIST_PTR real = NULL;
    if (get == NULL || get(&real) != CKR_OK || real == NULL)
        return CKR_GENERAL_ERROR;
    memcpy(&shim, real, sizeof shim);
    real_sign = real->C_Sign;
    shim.C_Sign = hanging_sign;
    shim.C_GetFunctionList = C_GetFunctionList;
    *list = &shim;
    return CKR_OK;
}

import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Algorithm(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALGORITHM_UNSPECIFIED: _ClassVar[Algorithm]
    ALGORITHM_ECDSA_SHA2_NISTP256: _ClassVar[Algorithm]
    ALGORITHM_ECDSA_SHA2_NISTP384: _ClassVar[Algorithm]
    ALGORITHM_ED25519: _ClassVar[Algorithm]
    ALGORITHM_RSASSA_PSS_SHA256: _ClassVar[Algorithm]

class KeyState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEY_STATE_UNSPECIFIED: _ClassVar[KeyState]
    KEY_STATE_ACTIVE: _ClassVar[KeyState]
    KEY_STATE_RETIRED: _ClassVar[KeyState]
    KEY_STATE_DESTROYED: _ClassVar[KeyState]

class SignatureRequestState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIGNATURE_REQUEST_STATE_UNSPECIFIED: _ClassVar[SignatureRequestState]
    SIGNATURE_REQUEST_STATE_PENDING: _ClassVar[SignatureRequestState]
    SIGNATURE_REQUEST_STATE_APPROVED: _ClassVar[SignatureRequestState]
    SIGNATURE_REQUEST_STATE_FULFILLED: _ClassVar[SignatureRequestState]
    SIGNATURE_REQUEST_STATE_EXPIRED: _ClassVar[SignatureRequestState]
ALGORITHM_UNSPECIFIED: Algorithm
ALGORITHM_ECDSA_SHA2_NISTP256: Algorithm
ALGORITHM_ECDSA_SHA2_NISTP384: Algorithm
ALGORITHM_ED25519: Algorithm
ALGORITHM_RSASSA_PSS_SHA256: Algorithm
KEY_STATE_UNSPECIFIED: KeyState
KEY_STATE_ACTIVE: KeyState
KEY_STATE_RETIRED: KeyState
KEY_STATE_DESTROYED: KeyState
SIGNATURE_REQUEST_STATE_UNSPECIFIED: SignatureRequestState
SIGNATURE_REQUEST_STATE_PENDING: SignatureRequestState
SIGNATURE_REQUEST_STATE_APPROVED: SignatureRequestState
SIGNATURE_REQUEST_STATE_FULFILLED: SignatureRequestState
SIGNATURE_REQUEST_STATE_EXPIRED: SignatureRequestState

class Key(_message.Message):
    __slots__ = ("key_id", "algorithm", "scheme", "public_key_pem", "tuf_key_json", "label", "role", "repository", "state", "created_at", "retired_at", "keytype", "quorum", "notary_key_id", "certificate_pem", "certificate_key_id")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    TUF_KEY_JSON_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    RETIRED_AT_FIELD_NUMBER: _ClassVar[int]
    KEYTYPE_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    NOTARY_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    algorithm: Algorithm
    scheme: str
    public_key_pem: str
    tuf_key_json: str
    label: str
    role: str
    repository: str
    state: KeyState
    created_at: _timestamp_pb2.Timestamp
    retired_at: _timestamp_pb2.Timestamp
    keytype: str
    quorum: bool
    notary_key_id: str
    certificate_pem: str
    certificate_key_id: str
    def __init__(self, key_id: _Optional[str] = ..., algorithm: _Optional[_Union[Algorithm, str]] = ..., scheme: _Optional[str] = ..., public_key_pem: _Optional[str] = ..., tuf_key_json: _Optional[str] = ..., label: _Optional[str] = ..., role: _Optional[str] = ..., repository: _Optional[str] = ..., state: _Optional[_Union[KeyState, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., retired_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., keytype: _Optional[str] = ..., quorum: _Optional[bool] = ..., notary_key_id: _Optional[str] = ..., certificate_pem: _Optional[str] = ..., certificate_key_id: _Optional[str] = ...) -> None: ...

class CreateKeyRequest(_message.Message):
    __slots__ = ("label", "algorithm", "role", "repository", "quorum")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    label: str
    algorithm: Algorithm
    role: str
    repository: str
    quorum: bool
    def __init__(self, label: _Optional[str] = ..., algorithm: _Optional[_Union[Algorithm, str]] = ..., role: _Optional[str] = ..., repository: _Optional[str] = ..., quorum: _Optional[bool] = ...) -> None: ...

class CreateKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: Key
    def __init__(self, key: _Optional[_Union[Key, _Mapping]] = ...) -> None: ...

class GetKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class GetKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: Key
    def __init__(self, key: _Optional[_Union[Key, _Mapping]] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ("role", "repository", "state", "page_size", "page_token")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    role: str
    repository: str
    state: KeyState
    page_size: int
    page_token: str
    def __init__(self, role: _Optional[str] = ..., repository: _Optional[str] = ..., state: _Optional[_Union[KeyState, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys", "next_page_token")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[Key]
    next_page_token: str
    def __init__(self, keys: _Optional[_Iterable[_Union[Key, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RetireKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class RetireKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: Key
    def __init__(self, key: _Optional[_Union[Key, _Mapping]] = ...) -> None: ...

class DestroyKeyRequest(_message.Message):
    __slots__ = ("key_id", "confirm")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIRM_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    confirm: str
    def __init__(self, key_id: _Optional[str] = ..., confirm: _Optional[str] = ...) -> None: ...

class DestroyKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: Key
    def __init__(self, key: _Optional[_Union[Key, _Mapping]] = ...) -> None: ...

class IssueCertificateRequest(_message.Message):
    __slots__ = ("key_id", "common_name", "validity_days")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    COMMON_NAME_FIELD_NUMBER: _ClassVar[int]
    VALIDITY_DAYS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    common_name: str
    validity_days: int
    def __init__(self, key_id: _Optional[str] = ..., common_name: _Optional[str] = ..., validity_days: _Optional[int] = ...) -> None: ...

class IssueCertificateResponse(_message.Message):
    __slots__ = ("certificate",)
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    certificate: Certificate
    def __init__(self, certificate: _Optional[_Union[Certificate, _Mapping]] = ...) -> None: ...

class Certificate(_message.Message):
    __slots__ = ("key_id", "certificate_pem", "certificate_key_id", "notary_key_id", "not_before", "not_after")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    NOTARY_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    certificate_pem: str
    certificate_key_id: str
    notary_key_id: str
    not_before: _timestamp_pb2.Timestamp
    not_after: _timestamp_pb2.Timestamp
    def __init__(self, key_id: _Optional[str] = ..., certificate_pem: _Optional[str] = ..., certificate_key_id: _Optional[str] = ..., notary_key_id: _Optional[str] = ..., not_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., not_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SignRequest(_message.Message):
    __slots__ = ("key_id", "payload", "digest", "request_id", "role")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    payload: bytes
    digest: bytes
    request_id: str
    role: str
    def __init__(self, key_id: _Optional[str] = ..., payload: _Optional[bytes] = ..., digest: _Optional[bytes] = ..., request_id: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class SignResponse(_message.Message):
    __slots__ = ("key_id", "signature", "scheme")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    signature: bytes
    scheme: str
    def __init__(self, key_id: _Optional[str] = ..., signature: _Optional[bytes] = ..., scheme: _Optional[str] = ...) -> None: ...

class SignBatchRequest(_message.Message):
    __slots__ = ("key_id", "items")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    items: _containers.RepeatedCompositeFieldContainer[SignBatchItem]
    def __init__(self, key_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[SignBatchItem, _Mapping]]] = ...) -> None: ...

class SignBatchItem(_message.Message):
    __slots__ = ("key_id", "payload", "digest", "role")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    payload: bytes
    digest: bytes
    role: str
    def __init__(self, key_id: _Optional[str] = ..., payload: _Optional[bytes] = ..., digest: _Optional[bytes] = ..., role: _Optional[str] = ...) -> None: ...

class ItemStatus(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class SignBatchResult(_message.Message):
    __slots__ = ("status", "key_id", "signature", "scheme")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    status: ItemStatus
    key_id: str
    signature: bytes
    scheme: str
    def __init__(self, status: _Optional[_Union[ItemStatus, _Mapping]] = ..., key_id: _Optional[str] = ..., signature: _Optional[bytes] = ..., scheme: _Optional[str] = ...) -> None: ...

class SignBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SignBatchResult]
    def __init__(self, results: _Optional[_Iterable[_Union[SignBatchResult, _Mapping]]] = ...) -> None: ...

class RequestSignatureRequest(_message.Message):
    __slots__ = ("key_id", "payload", "reason", "role")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    payload: bytes
    reason: str
    role: str
    def __init__(self, key_id: _Optional[str] = ..., payload: _Optional[bytes] = ..., reason: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class RequestSignatureResponse(_message.Message):
    __slots__ = ("signature_request",)
    SIGNATURE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    signature_request: SignatureRequest
    def __init__(self, signature_request: _Optional[_Union[SignatureRequest, _Mapping]] = ...) -> None: ...

class ApproveRequest(_message.Message):
    __slots__ = ("request_id", "payload_sha256")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SHA256_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    payload_sha256: str
    def __init__(self, request_id: _Optional[str] = ..., payload_sha256: _Optional[str] = ...) -> None: ...

class ApproveResponse(_message.Message):
    __slots__ = ("signature_request",)
    SIGNATURE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    signature_request: SignatureRequest
    def __init__(self, signature_request: _Optional[_Union[SignatureRequest, _Mapping]] = ...) -> None: ...

class GetSignatureRequestRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class GetSignatureRequestResponse(_message.Message):
    __slots__ = ("signature_request",)
    SIGNATURE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    signature_request: SignatureRequest
    def __init__(self, signature_request: _Optional[_Union[SignatureRequest, _Mapping]] = ...) -> None: ...

class SignatureRequest(_message.Message):
    __slots__ = ("request_id", "key_id", "payload_sha256", "requester", "approvers", "approvals_required", "state", "created_at", "expires_at", "reason", "payload")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SHA256_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    APPROVERS_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    key_id: str
    payload_sha256: str
    requester: str
    approvers: _containers.RepeatedScalarFieldContainer[str]
    approvals_required: int
    state: SignatureRequestState
    created_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    reason: str
    payload: bytes
    def __init__(self, request_id: _Optional[str] = ..., key_id: _Optional[str] = ..., payload_sha256: _Optional[str] = ..., requester: _Optional[str] = ..., approvers: _Optional[_Iterable[str]] = ..., approvals_required: _Optional[int] = ..., state: _Optional[_Union[SignatureRequestState, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., payload: _Optional[bytes] = ...) -> None: ...

"""The one request pipeline every signing and administration path goes through.

principal -> rate limit -> policy -> payload guards -> token -> audit -> release.

``signing.Pipeline`` runs the stages for Sign, SignBatch, digest signing, quorum signing
and notary ``Signer.Sign``; ``admin.Administration`` runs the authorise-and-audit stages
for key management and quorum requests; ``auditing.Recorder`` writes the one audit entry
each request leaves, allowed, denied or failed.
"""

from signer.pipeline.admin import Administration
from signer.pipeline.auditing import Recorder
from signer.pipeline.guards import Signed, SignGuard, SignInput
from signer.pipeline.signing import Pipeline

__all__ = ["Administration", "Pipeline", "Recorder", "SignGuard", "SignInput", "Signed"]

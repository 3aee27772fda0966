"""Signed releases: one OpenSSF ``model-signing`` manifest over every file of a release directory.

The gate signs ``promoted/`` (adapter, sidecar, model card and the decision itself) with an elliptic-curve
private key named by the run config (``release.signing_key``) before the directory is renamed into place, so
a release is never visible unsigned when a key is configured. The signature lives in the directory it covers
(:data:`SIGNATURE_FILE`, the one file the manifest leaves out) and is a Sigstore bundle verified offline
against a public key: nothing but that key vouches for a release, so anyone able to write a release directory
can no longer get an adapter served. Verification rejects any changed, missing or extra file and any symlink.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from model_signing import hashing, signing, verifying

from ..errors import BadInput

#: The signature (a Sigstore bundle) inside the directory it signs; the manifest covers every other file.
SIGNATURE_FILE = "release.sig"
#: The curves ``model-signing`` signs with (Sigstore's).
CURVES = ("secp256r1", "secp384r1", "secp521r1")


def _hashing() -> hashing.Config:
    """The manifest: sha256 per file, no symlinks, the signature itself left out (recorded in the signed manifest)."""
    return hashing.Config().use_file_serialization(hashing_algorithm="sha256", ignore_paths=[Path(SIGNATURE_FILE)])


def check_private_key(path: Path, what: str = "release.signing_key") -> str:
    """The sha256 of the public half of the PEM key at ``path`` (recorded in the decision); BadInput if unusable."""
    key = _load(path, what, serialization.load_pem_private_key, password=None)
    return public_key_sha256(key.public_key())


def check_public_key(path: Path, what: str = "public key") -> str:
    """The sha256 of the PEM public key at ``path``; BadInput naming the file and the cause if it is unusable."""
    return public_key_sha256(_load(path, what, serialization.load_pem_public_key))


def _load(path: Path, what: str, loader, **kwargs):  # noqa: ANN001, ANN202 - cryptography's loaders
    """A supported elliptic-curve key from ``path``, or BadInput naming ``what``, the file and the cause."""
    try:
        key = loader(Path(path).read_bytes(), **kwargs)
    except OSError as exc:
        raise BadInput(f"{what} {path}: cannot read it ({exc.strerror or exc})") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise BadInput(f"{what} {path}: not an unencrypted PEM key ({exc})") from None
    curve = getattr(getattr(key, "curve", None), "name", None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) or curve not in CURVES:
        raise BadInput(f"{what} {path}: model-signing needs an elliptic-curve key on {', '.join(CURVES)}, "
                       f"not {type(key).__name__} {curve or ''}".rstrip())
    return key


def public_key_sha256(key: ec.EllipticCurvePublicKey) -> str:
    """The key's identity as model-signing records it in a bundle: sha256 of its SubjectPublicKeyInfo PEM."""
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def sign_directory(directory: Path, private_key: Path) -> Path:
    """Sign every file of ``directory`` with ``private_key``; the signature is written into it."""
    directory = Path(directory)
    config = signing.Config().set_hashing_config(_hashing()).use_elliptic_key_signer(private_key=private_key)
    config.sign(directory, directory / SIGNATURE_FILE)
    return directory / SIGNATURE_FILE


def is_signed(directory: Path) -> bool:
    """Whether ``directory`` carries a signature (valid or not)."""
    return (Path(directory) / SIGNATURE_FILE).exists()


def verification_failure(directory: Path, public_key: Path) -> str | None:
    """Why ``directory`` is not exactly what the holder of ``public_key``'s private half signed, or None."""
    directory = Path(directory)
    if not (directory / SIGNATURE_FILE).is_file():
        return f"unsigned: no {SIGNATURE_FILE} in {directory.name}/"
    config = verifying.Config().set_hashing_config(_hashing()).use_elliptic_key_verifier(public_key=public_key)
    try:
        config.verify(directory, directory / SIGNATURE_FILE)
    except InvalidSignature:
        return f"bad signature: {SIGNATURE_FILE} was not made by the configured key over this manifest"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"bad signature: {_describe(exc)}"
    return None


#: model-signing's manifest differences, as (its wording, ours).
_DIFFERENCES = ((re.compile(r"Hash mismatch for '([^']+)'"), "changed since signing"),
                (re.compile(r"Missing files in model '[^']*': ([^\]\"']+)"), "signed but missing"),
                (re.compile(r"Extra files found in model '[^']*': ([^\]\"']+)"), "not signed"))


def _describe(exc: Exception) -> str:
    """A verification error on one line, a manifest mismatch as the files that differ (not their digests)."""
    text = str(exc).replace("\\'", "'")  # model-signing joins a list's repr: quotes may come escaped
    found = [f"{words}: {', '.join(match.group(1) for match in pattern.finditer(text))}"
             for pattern, words in _DIFFERENCES if pattern.search(text)]
    return "; ".join(found) if found else " ".join(text.split()) or type(exc).__name__

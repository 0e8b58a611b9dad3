"""Ed25519 signatures over a whole model bundle, and the trusted keys that verify them.

A bundle's integrity record (``integrity.sha256`` in the manifest) and the metadata embedded in each model
file catch accidents and inconsistent edits, but anyone can recompute a sha256 or copy metadata into another
model. A signature cannot be recomputed without the private key: ``signature.json`` beside the manifest
holds the sha256 of every file of the bundle (manifest, every artifact file, the verification set, the
reports) and an ed25519 signature over that list. The runtime accepts it when the signing key is one of
the trusted public keys:

- the project's own key(s), shipped in the package (``runtime/keys/*.pub``);
- ``/etc/dermsort/trusted-keys/*.pub`` (a clinic's own key, for every user of the machine);
- ``$XDG_CONFIG_HOME/dermsort/trusted-keys/*.pub`` (default ``~/.config/dermsort/trusted-keys``).

``--require-signed`` (sort/watch/info), ``DERMSORT_REQUIRE_SIGNED=1`` or ``require_signed = true`` in
``/etc/dermsort/config.toml`` or ``$XDG_CONFIG_HOME/dermsort/config.toml`` make a bundle that is not signed by
a trusted key refuse to run. A signature that does not match the bundle is refused always.

``cryptography`` is imported only when a signature is read or written.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelError
from .fileops import sha256_file

SIGNATURE = "signature.json"
SIGNATURE_FORMAT = "dermsort-bundle-signature"
SIGNATURE_VERSION = 1
PACKAGE_KEYS = Path(__file__).resolve().parent / "keys"
SYSTEM_CONFIG = Path("/etc/dermsort")
REQUIRE_ENV = "DERMSORT_REQUIRE_SIGNED"
UNSIGNED = "unsigned (locally built)"


def user_config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "dermsort"


def trusted_key_dirs() -> list[Path]:
    """Where trusted public keys (``*.pub``) are looked up, in this order."""
    return [PACKAGE_KEYS, SYSTEM_CONFIG / "trusted-keys", user_config_dir() / "trusted-keys"]


def _truthy(text: str) -> bool:
    return text.strip().lower() in ("1", "yes", "true", "on")


def require_signed_setting() -> tuple[bool, str]:
    """(required, where that was said): the environment variable, else either config file."""
    env = os.environ.get(REQUIRE_ENV)
    if env is not None and env.strip():
        return _truthy(env), f"${REQUIRE_ENV}"
    import tomllib

    for path in (SYSTEM_CONFIG / "config.toml", user_config_dir() / "config.toml"):
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            # a clinic's policy file that cannot be read must not silently mean "unsigned is fine"
            raise ModelError(f"cannot read {path}: {exc}") from None
        value = data.get("require_signed")
        if isinstance(value, bool) and value:
            return True, str(path)
    return False, ""


def key_id(raw_public: bytes) -> str:
    """Short, stable name of a public key: the first 16 hex digits of the sha256 of its 32 raw bytes."""
    return hashlib.sha256(raw_public).hexdigest()[:16]


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise ModelError('signed bundles need the cryptography package: pip install cryptography') from None
    return ed25519, serialization, InvalidSignature


def _raw(public_key: Any) -> bytes:
    _, serialization, _ = _crypto()
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_public_key(path: Path) -> Any:
    ed25519, serialization, _ = _crypto()
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read public key {path}: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ModelError(f"{path} is not an ed25519 public key")
    return key


def load_private_key(path: str | os.PathLike) -> Any:
    ed25519, serialization, _ = _crypto()
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(f"cannot read signing key {path}: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ModelError(f"{path} is not an ed25519 private key (make one with `dermsort keygen`)")
    return key


def trusted_keys() -> dict[str, tuple[Any, str]]:
    """key id -> (public key, label: the file it came from)."""
    found: dict[str, tuple[Any, str]] = {}
    for folder in trusted_key_dirs():
        try:
            paths = sorted(folder.glob("*.pub"))
        except OSError:
            continue
        for path in paths:
            key = load_public_key(path)
            found.setdefault(key_id(_raw(key)), (key, str(path)))
    return found


def generate_key(path: str | os.PathLike, force: bool = False) -> tuple[Path, Path, str]:
    """Write a new ed25519 private key to ``path`` (PEM, mode 0600) and its public key to ``path.pub``."""
    ed25519, serialization, _ = _crypto()
    private_path = Path(path)
    public_path = private_path.with_name(private_path.name + ".pub")
    if not force and (private_path.exists() or public_path.exists()):
        raise ModelError(f"{private_path} or {public_path} exists; refusing to overwrite a key")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path, key_id(_raw(key.public_key()))


def bundle_files(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file in the bundle folder except the signature itself."""
    files: dict[str, str] = {}
    for dirpath, dirnames, names in os.walk(root):
        dirnames.sort()
        for name in sorted(names):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if rel == SIGNATURE:
                continue
            if path.is_symlink() or not path.is_file():
                raise ModelError(f"{path} is not a regular file; a bundle holds only regular files")
            files[rel] = sha256_file(path)
    return files


def _payload(model_id: str, kid: str, files: dict[str, str]) -> bytes:
    signed = {"format": SIGNATURE_FORMAT, "version": SIGNATURE_VERSION, "algorithm": "ed25519",
              "model_id": model_id, "key_id": kid, "files": files}
    return json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def sign_bundle(root: str | os.PathLike, key_path: str | os.PathLike) -> str:
    """Sign every file of the bundle at ``root`` with the private key at ``key_path``; returns the key id."""
    root = Path(root)
    key = load_private_key(key_path)
    manifest = json.loads((root / "manifest.json").read_text())
    raw = _raw(key.public_key())
    kid = key_id(raw)
    files = bundle_files(root)
    signature = key.sign(_payload(str(manifest.get("model_id", "")), kid, files))
    data = {"format": SIGNATURE_FORMAT, "version": SIGNATURE_VERSION, "algorithm": "ed25519",
            "model_id": manifest.get("model_id", ""), "key_id": kid,
            "public_key": base64.b64encode(raw).decode("ascii"), "files": files,
            "signature": base64.b64encode(signature).decode("ascii")}
    tmp = root / f".{SIGNATURE}.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, root / SIGNATURE)
    return kid


@dataclass
class SignatureStatus:
    """Who vouches for a bundle: ``signed`` (a trusted key), ``untrusted`` (a valid signature by a key that is
    not trusted here: as good as unsigned) or ``unsigned``."""

    state: str = "unsigned"
    key_id: str = ""
    key_source: str = ""
    files: int = 0
    #: relative path -> sha256 of every file, as hashed and matched against the signature on load (so that
    #: Bundle.verify need not hash the loaded artifact a second time)
    hashes: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def trusted(self) -> bool:
        return self.state == "signed"

    def describe(self) -> str:
        if self.state == "signed":
            return f"signed by {self.key_id}"
        if self.state == "untrusted":
            return f"signed by UNTRUSTED key {self.key_id}"
        return UNSIGNED

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "key_id": self.key_id, "trusted_key": self.key_source, "files": self.files,
                "text": self.describe()}


def verify_bundle(root: Path, model_id: str) -> SignatureStatus:
    """Check ``root/signature.json`` if there is one; raise ModelError when it does not match the bundle."""
    path = root / SIGNATURE
    if not path.exists():
        return SignatureStatus()
    _, _, InvalidSignature = _crypto()
    ed25519, _, _ = _crypto()
    try:
        data = json.loads(path.read_text())
        kid = str(data["key_id"])
        files = {str(k): str(v) for k, v in data["files"].items()}
        signature = base64.b64decode(data["signature"], validate=True)
        embedded_raw = base64.b64decode(data["public_key"], validate=True)
        if data.get("format") != SIGNATURE_FORMAT or int(data.get("version", 0)) != SIGNATURE_VERSION:
            raise ValueError("unknown signature format")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"{path} is unreadable ({exc}); refusing the bundle (remove the file only if you "
                         "built this bundle yourself)") from None
    payload = _payload(model_id, kid, files)
    trusted = trusted_keys()
    if kid in trusted:
        key, source = trusted[kid]
    else:
        if key_id(embedded_raw) != kid:
            raise ModelError(f"{path}: its public key does not match its key id {kid}; refusing the bundle")
        try:
            key, source = ed25519.Ed25519PublicKey.from_public_bytes(embedded_raw), ""
        except ValueError as exc:
            raise ModelError(f"{path}: bad public key ({exc}); refusing the bundle") from None
    try:
        key.verify(signature, payload)
    except InvalidSignature:
        raise ModelError(f"the signature in {path} does not verify (key {kid}): the signed file list or model id "
                         "was edited; refusing the bundle") from None
    actual = bundle_files(root)
    if actual != files:
        extra = sorted(set(actual) - set(files))
        missing = sorted(set(files) - set(actual))
        changed = sorted(k for k in set(files) & set(actual) if files[k] != actual[k])
        what = "; ".join(part for part in (
            f"changed: {', '.join(changed[:3])}" if changed else "",
            f"not signed: {', '.join(extra[:3])}" if extra else "",
            f"missing: {', '.join(missing[:3])}" if missing else "") if part)
        raise ModelError(f"bundle {root} does not match its signature by {kid} ({what}): modified after signing; "
                         "refusing to run it - reinstall the bundle or sign it again")
    return SignatureStatus(state="signed" if source else "untrusted", key_id=kid, key_source=source,
                           files=len(files), hashes=actual)


def check_policy(status: SignatureStatus, root: Path, required: bool, why: str = "--require-signed") -> None:
    """Refuse a bundle that no trusted key signed when signatures are required."""
    if required and not status.trusted:
        raise ModelError(f"model bundle {root} is {status.describe()}, and {why} requires a bundle signed by a "
                         f"trusted key (keys: {', '.join(str(d) for d in trusted_key_dirs())})")

"""``dermsort keygen`` and ``dermsort sign``: make an ed25519 key pair, sign an existing bundle with it."""

from __future__ import annotations

from pathlib import Path

import click

from .bundle import load_bundle
from .signing import generate_key, sign_bundle, trusted_key_dirs, user_config_dir


@click.command()
@click.argument("key", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--force", is_flag=True, help="Overwrite an existing key file.")
def keygen(key: Path, force: bool) -> None:
    """Write a new ed25519 signing key to KEY (private, mode 0600) and its public key to KEY.pub."""
    private, public, kid = generate_key(key, force=force)
    click.echo(f"key id {kid}\nprivate key {private} (keep it secret, out of any repository)\npublic key  {public}")
    click.echo(f"to trust it on a machine, copy {public.name} into {user_config_dir() / 'trusted-keys'} "
               f"(or {trusted_key_dirs()[1]} for every user)")


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--key", "key", required=True, type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="ed25519 private key (from `dermsort keygen`).")
def sign(bundle: Path, key: Path) -> None:
    """Sign every file of the model BUNDLE (manifest, artifacts, verification set) with KEY."""
    # only a bundle that passes its own checks (integrity record, an existing signature) is worth signing
    load_bundle(bundle)
    kid = sign_bundle(bundle, key)
    status = load_bundle(bundle)[0].signature
    click.echo(f"{bundle}: {status.files} file(s) signed by {kid}"
               + ("" if status.trusted else " (this key is not trusted on this machine)"))

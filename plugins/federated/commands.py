"""``tunewright federate``: simulate a federation on this machine, or run its server or a site.

tunewright federate CONFIG                                    # simulation (Flower + Ray)
tunewright federate server CONFIG                             # Flower SuperLink + the job
tunewright federate site CONFIG --data FILE --server HOST:PORT  # one site with its own data
tunewright federate credentials FOLDER --host HOST --site NAME  # TLS files and site keys
"""

from __future__ import annotations

import re
from pathlib import Path

import click


def _echo(message: str) -> None:
    click.echo(message, err=True)


class _SimulateByDefault(click.Group):
    """``federate CONFIG`` means ``federate simulate CONFIG``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["simulate", *args]
        return super().parse_args(ctx, args)


def add_commands(cli: click.Group) -> None:
    @cli.group(cls=_SimulateByDefault)
    def federate() -> None:
        """Federated fine-tuning with Flower: only adapter weights leave a site.

        \b
        tunewright federate CONFIG              simulate the sites on this machine
        tunewright federate server CONFIG       run the server of a deployed federation
        tunewright federate site CONFIG --data FILE --server HOST:PORT
        tunewright federate credentials FOLDER --host HOST --site NAME
        """

    @federate.command()
    @click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
    @click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
    @click.pass_obj
    def simulate(pm, config_path: str, overwrite: bool) -> None:
        """Split CONFIG's data into federated.sites sites and train across them in simulation."""
        from tunewright import run_job

        from .configs import federated_config

        config = federated_config(config_path, pm)
        result = run_job(config, pm, overwrite=overwrite, echo=_echo)
        _echo(f"run written to {result.run_dir}")

    @federate.command()
    @click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
    @click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
    @click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
    @click.pass_obj
    def server(pm, config_path: str, overwrite: bool, timeout: float | None) -> None:
        """Start the server (Flower SuperLink) on federated.server's address and run CONFIG's job
        with the sites that connect. Its data is the central held-out set."""
        from tunewright import ConfigError, JobFailed, UsageError

        from .configs import federated_config
        from .deploy import serve_federation

        config = federated_config(config_path, pm)
        settings = config.section("federated")
        if settings.server is None:
            raise ConfigError(
                f"{config_path}: federated.server: required for a deployed server "
                "(host, port, and TLS files or insecure: true)"
            )
        output = Path(config.output)
        outcome = serve_federation(
            Path(config_path),
            settings.server,
            overwrite=overwrite,
            echo=_echo,
            workdir=output.parent / f".{output.name}.server",
            timeout=timeout,
        )
        if outcome.get("status") != "completed":
            error = outcome.get("error", "unknown error")
            raise (UsageError if outcome.get("exit_code") == 2 else JobFailed)(error)
        _echo(f"run written to {outcome['run_dir']}")

    @federate.command()
    @click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
    @click.option(
        "--data",
        "data_path",
        required=True,
        type=click.Path(dir_okay=False),
        help="This site's own data (split into training and held-out as data.validation says).",
    )
    @click.option(
        "--server",
        "server_address",
        required=True,
        metavar="HOST:PORT",
        help="The server's address.",
    )
    @click.option(
        "--name",
        default=None,
        help="This site's name in the server's records (default: the data file's name).",
    )
    @click.option(
        "--workdir",
        type=click.Path(file_okay=False),
        default=None,
        help="Where the site keeps its working files (default: .tunewright-site-NAME).",
    )
    @click.option(
        "--root-certificates",
        type=click.Path(dir_okay=False),
        default=None,
        help="CA certificate (PEM) that signed the server's certificate (TLS).",
    )
    @click.option(
        "--auth-key",
        type=click.Path(dir_okay=False),
        default=None,
        help="This site's private key (OpenSSH, EC SECP384R1), when the server authenticates sites.",
    )
    @click.option(
        "--insecure", is_flag=True, help="Plain HTTP (a server started with insecure: true)."
    )
    @click.pass_obj
    def site(
        pm,
        config_path: str,
        data_path: str,
        server_address: str,
        name: str | None,
        workdir: str | None,
        root_certificates: str | None,
        auth_key: str | None,
        insecure: bool,
    ) -> None:
        """Join a federation as a site that trains on its own data.

        The site prepares its run (data checked, model loaded) before it connects, keeps it for
        the whole federation, and answers every round from it. It ends by itself: exit 0 once it
        answered the last round and the server closed, 1 when the server has been gone for
        federated.connect_timeout seconds, 2 when it refused the server's config."""
        from tunewright import UsageError

        from .configs import site_config
        from .deploy import SiteProgress, free_port, run_site, site_args
        from .site import Site
        from .worker import SiteServer

        if ":" not in server_address:
            raise UsageError(
                f"--server {server_address!r}: expected HOST:PORT, e.g. 127.0.0.1:9092"
            )
        if not insecure and not root_certificates:
            raise UsageError(
                "--root-certificates: required for a TLS server (or --insecure for plain HTTP)"
            )
        name = name or Path(data_path).stem
        folder = Path(workdir or f".tunewright-site-{name}")
        config = site_config(config_path, data_path, str(folder / "run"), pm)  # fails fast
        site = Site(config, pm, folder / "run", name, echo=_echo)
        site.prepare()  # every data error now, before the site joins

        def announce(op: str, config: dict) -> None:
            _echo(f"site {name}: round {config.get('server-round', '?')}: {op}")

        progress = SiteProgress()

        server = SiteServer(
            site,
            on_request=announce,
            on_reply=lambda op, config, reply: _echo(progress.answered(name, op, config, reply)),
        )
        timeout = config.section("federated").connect_timeout
        try:
            args = site_args(
                server_address,
                name=name,
                socket=server.start(),
                port=free_port(),
                connect_timeout=timeout,
                root_certificates=root_certificates,
                auth_key=auth_key,
                insecure=insecure,
            )
            code = run_site(args, folder, server_address, timeout, _echo, progress)
        finally:
            server.close()
        raise SystemExit(0 if code in (0, None) else code)

    @federate.command()
    @click.argument("folder", type=click.Path(file_okay=False))
    @click.option(
        "--host",
        "hosts",
        multiple=True,
        help="Make the TLS files, for a server the sites reach at this address (repeat: every "
        "name and IP they use).",
    )
    @click.option(
        "--site", "sites", multiple=True, help="A site to make an authentication key for (repeat)."
    )
    @click.option(
        "--days", default=365, show_default=True, help="How long the certificates are valid."
    )
    def credentials(folder: str, hosts: tuple[str, ...], sites: tuple[str, ...], days: int) -> None:
        """Write into FOLDER a federation's TLS files (with --host: ca.crt, server.pem, server.key)
        and, for each --site, a key pair for site authentication (keys/NAME, keys/NAME.pub); a
        site that joins later gets its key with --site alone.

        Refuses (exit 2, nothing written) to replace any of those files: a new CA would lock out
        every site that trusts the old one, a new key the site that holds the old one."""
        from tunewright import UsageError

        from .credentials import make_site_key, make_tls

        if not hosts and not sites:
            raise UsageError(
                "federate credentials: give --host (TLS files) or --site (site keys), or both"
            )
        target = Path(folder)
        planned = ["ca.crt", "server.pem", "server.key"] if hosts else []
        planned += [f"keys/{name}{suffix}" for name in sites for suffix in ("", ".pub")]
        bad = [name for name in sites if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name)]
        if bad:
            raise UsageError(
                f"--site {bad[0]!r}: a site name is a plain file name (letters, digits, '.', '-' "
                "and '_', not starting with a dot)"
            )
        existing = [name for name in planned if (target / name).exists()]
        if existing:
            raise UsageError(
                f"{target}: holds {', '.join(existing)} already; nothing was written (a new CA "
                "would lock out the sites that trust the old one, a new key the site that holds "
                "the old one); choose another folder or site name"
            )
        if hosts:
            files = make_tls(target, list(hosts), days=days)
            _echo(
                f"server: federated.server: {{ca_certfile: {files['ca_certfile']}, certfile: {files['certfile']}, "
                f"keyfile: {files['keyfile']}}}"
            )
        for name in sites:
            make_site_key(target / "keys", name)
            _echo(
                f"site {name}: --root-certificates {target / 'ca.crt'} --auth-key {target / 'keys' / name}; "
                f"list {target / 'keys' / (name + '.pub')} in federated.server.authorized_sites"
            )

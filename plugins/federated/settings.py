"""The ``federated:`` config section: how many sites, rounds and local steps, how the trainable
state is aggregated, what the server does with it, and how the deployed processes talk.

Only names and numbers live here (pydantic, no Flower, no torch): the section is validated with the
rest of the config before anything heavy is imported.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tunewright import Section


class PrivacySettings(Section):
    """Central differential privacy with Flower's fixed-clipping wrappers
    (https://arxiv.org/abs/1710.06963): every site's update is clipped to ``clipping_norm``, and
    Gaussian noise of standard deviation ``noise_multiplier * clipping_norm / sites`` is added to
    the aggregate."""

    clipping: Literal["server", "client"] = Field(
        "server", description="where updates are clipped: on the server (Flower's "
        "DifferentialPrivacyServerSideFixedClipping) or at each site (the client-side wrapper and "
        "fixedclipping_mod)")
    noise_multiplier: float = Field(1.0, ge=0, description="noise stdev as a multiple of the clipping norm")
    clipping_norm: float = Field(1.0, gt=0, description="largest L2 norm of one site's update")


class ServerSettings(Section):
    """Where the deployed server listens and how sites are admitted (``tunewright federate server``)."""

    host: str = Field("127.0.0.1", description="address the server binds (0.0.0.0 for remote sites)")
    port: int = Field(9092, ge=1, le=65535, description="the one HTTP(S) port of Flower's SuperLink")
    insecure: bool = Field(False, description="plain HTTP; without it the server needs the TLS files below")
    ca_certfile: str | None = Field(None, description="CA certificate (PEM) that signed certfile")
    certfile: str | None = Field(None, description="server certificate (PEM); needs SANs for its addresses")
    keyfile: str | None = Field(None, description="server private key (PEM)")
    own_data: bool = Field(
        True, description="the server reads the config's data: its held-out split (data.validation) is "
        "the central test set, evaluated every round; false: it reads none (a classification job then "
        "names its labels in federated.labels) and the sites' evaluation is all there is")
    authorized_sites: list[str] | None = Field(
        None, description="public keys (OpenSSH, EC SECP384R1) of the sites allowed to join; set, "
        "it turns site authentication on and refuses every other site (needs TLS)")

    @model_validator(mode="after")
    def _tls(self):
        files = [self.ca_certfile, self.certfile, self.keyfile]
        if not self.insecure and not all(files):
            raise ValueError("set ca_certfile, certfile and keyfile for TLS, or insecure: true")
        if self.insecure and self.authorized_sites:
            raise ValueError("authorized_sites needs TLS (Flower authenticates sites over HTTPS only); "
                             "set the TLS files and insecure: false")
        return self


class FederatedSettings(Section):
    """Federated fine-tuning with Flower: sites train on their own data, only the trainable state
    (adapter and head) travels, and the server aggregates it between rounds."""

    rounds: int = Field(3, ge=1, description="federated rounds")
    local_steps: int = Field(10, ge=1, description="optimizer steps each site takes per round")
    sites: int = Field(3, ge=1, description="simulation: sites the training data is split into")
    partition: Literal["iid", "dirichlet", "field"] = Field(
        "iid", description="simulation: iid (shuffled, equal sizes), dirichlet (non-IID by label, "
        "see dirichlet_alpha) or field (one group of sites per value of partition_field)")
    dirichlet_alpha: float = Field(0.5, gt=0, description="Dirichlet concentration: small is more skewed")
    partition_field: str | None = Field(None, description="the example field that partition: field or "
                                        "dirichlet groups by (default for dirichlet: the task's label)")
    aggregation: Literal["fedavg", "ffa", "product"] = Field(
        "fedavg", description="fedavg: example-weighted average of every trainable tensor; ffa: "
        "FFA-LoRA (A frozen from the shared seed, only B trains and travels: the average is exact); "
        "product: average B·A and factor it back to rank r by SVD (FlexLoRA)")
    strategy: Literal["fedavg", "fedprox", "fedadam"] = Field(
        "fedavg", description="server-side strategy applied on top of the aggregation")
    proximal_mu: float = Field(0.01, ge=0, description="fedprox: weight of the proximal term mu/2·||w - w_global||²")
    server_learning_rate: float = Field(0.01, gt=0, description="fedadam: server step size (eta)")
    beta_1: float = Field(0.9, ge=0, lt=1, description="fedadam: first-moment decay")
    beta_2: float = Field(0.99, ge=0, lt=1, description="fedadam: second-moment decay")
    tau: float = Field(1e-3, gt=0, description="fedadam: adaptivity (added to the root of the second moment)")
    min_sites: int = Field(2, ge=1, description="sites that must take part in a round")
    wait_for_sites: float = Field(120.0, gt=0, description="seconds to wait for min_sites to connect before failing")
    round_timeout: float = Field(600.0, gt=0, description="seconds a round waits for replies; later sites are left out")
    labels: list[str] | None = Field(None, description="the label set, in order, of a server without data "
                                     "(federated.server.own_data: false); the sites take the server's labels")
    site_evaluation: bool = Field(True, description="each site evaluates the aggregate on its held-out data every round")
    privacy: PrivacySettings | None = Field(None, description="differential privacy on the updates (off by default)")
    simulation_cpus: int = Field(2, ge=1, description="simulation: CPU cores Flower's Ray backend may use")
    cpus_per_site: float = Field(1.0, gt=0, description="simulation: cores one site's training takes")
    server: ServerSettings | None = Field(None, description="deployment: the server's address, TLS and site keys")
    connect_timeout: float = Field(60.0, gt=0, description="deployment: seconds a site tries to reach the server")

    @model_validator(mode="after")
    def _consistent(self):
        if self.partition == "field" and not self.partition_field:
            raise ValueError("partition: field needs partition_field (the example key to group sites by)")
        if self.min_sites > self.sites and self.server is None:
            raise ValueError(f"min_sites ({self.min_sites}) is more than sites ({self.sites})")
        return self

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
        "server",
        description="where updates are clipped: on the server (Flower's "
        "DifferentialPrivacyServerSideFixedClipping) or at each site (the client-side wrapper and "
        "fixedclipping_mod)",
    )
    noise_multiplier: float = Field(
        1.0, ge=0, description="noise stdev as a multiple of the clipping norm"
    )
    clipping_norm: float = Field(1.0, gt=0, description="largest L2 norm of one site's update")


class SecureAggregationSettings(Section):
    """Secure aggregation with Flower's SecAgg+ (https://arxiv.org/abs/2205.06117): each site masks
    its weighted state so that the server learns only the sum over the round's sites, never one
    site's state. A site that drops out after the key exchange is unmasked from its neighbours'
    shares when at least ``threshold`` of them answer.

    States are quantized to integers: each value, times the site's weight (its examples divided by
    ``max_weight``), must lie within ``±clipping_range``, and the step is
    ``2 * clipping_range / quantization_range``. A site whose update would be clipped or whose
    example count exceeds ``max_weight`` sends an error instead of a wrong update."""

    shares: int | float = Field(
        1.0,
        description="how many of the round's sites hold a share of each site's secrets: a "
        "fraction of them (float) or a count (int, 3 or more; made odd)",
    )
    threshold: int | float = Field(
        0.67,
        description="shares needed to unmask a site: a fraction of shares (float) or a count "
        "(int, fewer than shares); higher is more private, lower tolerates more dropouts",
    )
    max_weight: float = Field(
        1000.0, gt=0, description="the largest example count a site may weigh in with"
    )
    clipping_range: float = Field(
        1.0, gt=0, description="bound on every weighted value before quantization"
    )
    quantization_range: int = Field(2**22, gt=0, description="integer levels of the quantization")
    modulus_range: int = Field(
        2**32,
        description="range of the masks: a power of 2, above quantization_range, at most 2**32",
    )

    @model_validator(mode="after")
    def _ranges(self):
        if isinstance(self.shares, int) and self.shares != 1 and self.shares < 3:
            raise ValueError(
                f"shares: {self.shares} as a count must be 3 or more (or a fraction, e.g. 1.0)"
            )
        if isinstance(self.shares, float) and not 0 < self.shares <= 1:
            raise ValueError(f"shares: {self.shares} as a fraction must be in (0, 1]")
        if isinstance(self.threshold, float) and not 0 < self.threshold <= 1:
            raise ValueError(f"threshold: {self.threshold} as a fraction must be in (0, 1]")
        if isinstance(self.threshold, int) and self.threshold != 1:
            if self.threshold < 2:
                raise ValueError(f"threshold: {self.threshold} as a count must be 2 or more")
            if isinstance(self.shares, int) and self.shares != 1 and self.threshold >= self.shares:
                raise ValueError(
                    f"threshold ({self.threshold}) must be fewer than shares ({self.shares})"
                )
        m = self.modulus_range
        if m <= self.quantization_range or m > 2**32 or m & (m - 1):
            raise ValueError(
                f"modulus_range: {m} must be a power of 2 above quantization_range "
                f"({self.quantization_range}) and at most 2**32"
            )
        return self


class ServerSettings(Section):
    """Where the deployed server listens and how sites are admitted (``tunewright federate server``)."""

    host: str = Field(
        "127.0.0.1", description="address the server binds (0.0.0.0 for remote sites)"
    )
    port: int = Field(
        9092, ge=1, le=65535, description="the one HTTP(S) port of Flower's SuperLink"
    )
    insecure: bool = Field(
        False, description="plain HTTP; without it the server needs the TLS files below"
    )
    ca_certfile: str | None = Field(None, description="CA certificate (PEM) that signed certfile")
    certfile: str | None = Field(
        None, description="server certificate (PEM); needs SANs for its addresses"
    )
    keyfile: str | None = Field(None, description="server private key (PEM)")
    own_data: bool = Field(
        True,
        description="the server reads the config's data: its held-out split (data.validation) is "
        "the central test set, evaluated every round; false: it reads none (a classification job then "
        "names its labels in federated.labels) and the sites' evaluation is all there is",
    )
    authorized_sites: list[str] | None = Field(
        None,
        description="public keys (OpenSSH, EC SECP384R1) of the sites allowed to join; set, "
        "it turns site authentication on and refuses every other site (needs TLS)",
    )

    @model_validator(mode="after")
    def _tls(self):
        files = [self.ca_certfile, self.certfile, self.keyfile]
        if not self.insecure and not all(files):
            raise ValueError("set ca_certfile, certfile and keyfile for TLS, or insecure: true")
        if self.insecure and self.authorized_sites:
            raise ValueError(
                "authorized_sites needs TLS (Flower authenticates sites over HTTPS only); "
                "set the TLS files and insecure: false"
            )
        return self


class FederatedSettings(Section):
    """Federated fine-tuning with Flower: sites train on their own data, only the trainable state
    (adapter and head) travels, and the server aggregates it between rounds."""

    rounds: int = Field(3, ge=1, description="federated rounds")
    local_steps: int = Field(10, ge=1, description="optimizer steps each site takes per round")
    sites: int = Field(3, ge=1, description="simulation: sites the training data is split into")
    partition: Literal["iid", "dirichlet", "field"] = Field(
        "iid",
        description="simulation: iid (shuffled, equal sizes), dirichlet (non-IID by label, "
        "see dirichlet_alpha) or field (one group of sites per value of partition_field)",
    )
    dirichlet_alpha: float = Field(
        0.5, gt=0, description="Dirichlet concentration: small is more skewed"
    )
    partition_field: str | None = Field(
        None,
        description="the example field that partition: field or "
        "dirichlet groups by (default for dirichlet: the task's label)",
    )
    aggregation: Literal["fedavg", "ffa", "product"] = Field(
        "fedavg",
        description="fedavg: example-weighted average of every trainable tensor; ffa: "
        "FFA-LoRA (A frozen from the shared seed, only B trains and travels: the average is exact); "
        "product: average B·A and factor it back to rank r by SVD (FlexLoRA)",
    )
    strategy: Literal["fedavg", "fedprox", "fedadam", "fedavgm"] = Field(
        "fedavg", description="server-side strategy applied on top of the aggregation"
    )
    proximal_mu: float = Field(
        0.01, ge=0, description="fedprox: weight of the proximal term mu/2·||w - w_global||²"
    )
    server_learning_rate: float | None = Field(
        None,
        gt=0,
        description="fedadam / fedavgm: the server's step size (default: 0.01 for fedadam, "
        "1.0 for fedavgm, where 1.0 without momentum is the plain average)",
    )
    server_momentum: float = Field(
        0.0, ge=0, lt=1, description="fedavgm: momentum of the server's steps"
    )
    beta_1: float = Field(0.9, ge=0, lt=1, description="fedadam: first-moment decay")
    beta_2: float = Field(0.99, ge=0, lt=1, description="fedadam: second-moment decay")
    tau: float = Field(
        1e-3, gt=0, description="fedadam: adaptivity (added to the root of the second moment)"
    )
    min_sites: int = Field(2, ge=1, description="sites that must take part in a round")
    wait_for_sites: float = Field(
        120.0, gt=0, description="seconds to wait for min_sites to connect before failing"
    )
    round_timeout: float = Field(
        600.0, gt=0, description="seconds a round waits for replies; later sites are left out"
    )
    labels: list[str] | None = Field(
        None,
        description="the label set, in order, of a server without data "
        "(federated.server.own_data: false); the sites take the server's labels",
    )
    transfer_dtype: Literal["float32", "float16"] = Field(
        "float32",
        description="the dtype floating-point arrays travel in, both ways: float16 halves the "
        "bytes; the sites train and the server aggregates in float32, from the values that travelled",
    )
    site_evaluation: bool = Field(
        True, description="each site evaluates the aggregate on its held-out data every round"
    )
    privacy: PrivacySettings | None = Field(
        None, description="differential privacy on the updates (off by default)"
    )
    secure_aggregation: SecureAggregationSettings | None = Field(
        None,
        description="SecAgg+: the server sees only the sum of the sites' states (off by default)",
    )
    simulation_cpus: int = Field(
        2, ge=1, description="simulation: CPU cores Flower's Ray backend may use"
    )
    cpus_per_site: float = Field(
        1.0, gt=0, description="simulation: cores one site's training takes"
    )
    server: ServerSettings | None = Field(
        None, description="deployment: the server's address, TLS and site keys"
    )
    connect_timeout: float = Field(
        60.0, gt=0, description="deployment: seconds a site tries to reach the server"
    )

    @model_validator(mode="after")
    def _consistent(self):
        if self.partition == "field" and not self.partition_field:
            raise ValueError(
                "partition: field needs partition_field (the example key to group sites by)"
            )
        if self.min_sites > self.sites and self.server is None:
            raise ValueError(f"min_sites ({self.min_sites}) is more than sites ({self.sites})")
        if self.transfer_dtype != "float32":
            if self.secure_aggregation is not None:
                raise ValueError(
                    f"transfer_dtype: {self.transfer_dtype} with secure_aggregation: SecAgg+ "
                    "quantizes the states to integers itself (allowed: float32)"
                )
            if self.privacy is not None and self.privacy.clipping == "client":
                raise ValueError(
                    f"transfer_dtype: {self.transfer_dtype} with privacy.clipping: client is not "
                    "supported (Flower's clipping mod would clip in that dtype); use "
                    "privacy.clipping: server or transfer_dtype: float32"
                )
        if self.secure_aggregation is not None:
            if self.aggregation == "product":
                raise ValueError(
                    "secure_aggregation gives the server only the sum of the sites' states; "
                    "aggregation: product needs each site's B·A (use fedavg or ffa)"
                )
            if self.privacy is not None:
                raise ValueError(
                    "secure_aggregation with privacy is not supported yet: Flower's DP "
                    "wrappers clip and check each site's update, which the server no "
                    "longer sees; choose one"
                )
            if self.min_sites < 2:
                raise ValueError(
                    "secure_aggregation needs min_sites of 2 or more (a sum over one "
                    "site is that site's state)"
                )
        return self

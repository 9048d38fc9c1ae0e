"""Typed configuration: dataclass schemas merged with YAML files and dotlist overrides (omegaconf).

`load_config(path, overrides)` returns a validated `Config`. The embedded default is
`configs/local.yaml`; `configs/cluster.yaml` is the cluster profile. An unknown key or a value of
the wrong type raises `ConfigError` naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from ils.errors import UserError
from omegaconf.errors import OmegaConfBaseException

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "local.yaml"


class ConfigError(UserError, ValueError):
    """A configuration file or override is invalid."""


@dataclass
class StoreConfig:
    """Where every job reads and writes: a local folder, file:// or s3:// URI."""

    uri: str = "./ils-data"
    endpoint: Optional[str] = None  # S3 endpoint override, e.g. http://127.0.0.1:9000
    region: str = "us-east-1"
    # Credentials come from these environment variables, else from boto3's default chain.
    access_key_env: str = "AWS_ACCESS_KEY_ID"
    secret_key_env: str = "AWS_SECRET_ACCESS_KEY"
    session_token_env: str = "AWS_SESSION_TOKEN"


@dataclass
class RayConfig:
    """How to reach Ray: None starts a local loopback-only instance."""

    address: Optional[str] = None
    num_cpus: Optional[int] = None
    object_store_memory_mb: Optional[int] = None
    namespace: str = "ils"
    local_state_dir: str = ".ils-ray"  # local mode only: HOME for Ray (loopback settings)


@dataclass
class ImageConfig:
    """Decoding limits and the working size of images."""

    size: int = 512  # square working size; masks are written at this size
    max_pixels: int = 50_000_000  # refuse images that declare more pixels than this
    max_bytes: int = 200_000_000


@dataclass
class SampleConfig:
    """Synthetic phantom studies."""

    n: int = 60
    seed: int = 0
    size: int = 1024
    normal_fraction: float = 0.3
    monochrome1_fraction: float = 0.3
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    out: Optional[str] = None  # output URI; default <store>/phantoms
    workers: int = 0  # > 1: a process pool of this many workers
    real_base: Optional[str] = None  # realcxr-layout folder of real bases (docs/real_base.md); null = procedural only
    real_fraction: float = 0.5  # with real_base: share of studies built on a real radiograph


@dataclass
class StageConfig:
    """One pipeline stage: which backend, how many actors, which resources."""

    backend: str = "lite"
    concurrency: int = 1
    num_cpus: float = 0.25
    num_gpus: float = 0.0
    batch_size: int = 8
    weights: Optional[str] = None  # checkpoint path or URI for backends with weights
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class LLMConfig:
    """OpenAI-compatible endpoint for report structuring (a report is patient data)."""

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "local"
    api_key_env: str = "ILS_LLM_API_KEY"
    allowed_base_urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1", "http://localhost"])
    timeout_s: float = 60.0
    max_retries: int = 3
    backoff_s: float = 0.5
    requests_per_second: float = 20.0
    temperature: float = 0.0
    max_tokens: int = 768
    fallback_to_rules: bool = True
    max_in_flight: int = 16  # concurrent requests per report actor (per process for `ils report`)


@dataclass
class ReportConfig:
    backend: str = "rules"  # rules | llm
    concurrency: int = 1
    num_cpus: float = 0.25
    batch_size: int = 16  # studies per pipeline batch (every stage uses this batch size)
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources
    llm: LLMConfig = field(default_factory=LLMConfig)


@dataclass
class FuseConfig:
    """Mask fusion checks c1-c4 (SPEC section 2; thresholds unpublished, chosen here)."""

    min_anatomy_overlap: float = 0.3  # c1: fraction of the box inside the reported anatomy
    min_confidence: float = 0.25  # c2: detector confidence
    min_anomaly_fraction: float = 0.3  # c3: fraction of anomaly signal inside the box
    min_area_frac: float = 0.002  # c4: minimum size, fraction of the image
    anomaly_threshold: float = 0.5  # threshold on the normalised anomaly map
    min_component_frac: float = 0.0005  # connected components smaller than this are dropped


@dataclass
class PairConfig:
    negatives_per_study: int = 6
    seed: int = 0


@dataclass
class GenConfig:
    """ilsgen: dataset regeneration on Ray Data."""

    input: Optional[str] = None  # manifest URI; default: <store>/phantoms/manifest.parquet
    out: str = "gen"  # run folder, relative to the store unless a URI
    decode: StageConfig = field(default_factory=lambda: StageConfig(backend="pydicom", num_cpus=0.25))
    report: ReportConfig = field(default_factory=ReportConfig)
    anatomy: StageConfig = field(default_factory=StageConfig)
    anomaly: StageConfig = field(default_factory=StageConfig)
    detect: StageConfig = field(default_factory=StageConfig)
    fuse: FuseConfig = field(default_factory=FuseConfig)
    pairs: PairConfig = field(default_factory=PairConfig)
    max_errored_fraction: float = 0.2  # the run fails once more studies than this fail
    layout: str = "stages"  # stages: an actor pool per stage (cluster) | fused: the chain per actor
    fused_concurrency: int = 2  # fused layout: identical actors running the whole chain
    fused_num_cpus: float = 0.9
    task_num_cpus: float = 0.25  # CPUs per fuse/write worker
    fuse_concurrency: int = 1
    anomaly_fit_studies: int = 48  # report-normal studies that fit the lite anomaly model
    gate_mask_stages: bool = True  # anomaly + detect only for studies with a finding needing a mask
    compact_anomaly: bool = False  # anomaly maps as float16 between stages (half the bytes)


@dataclass
class ModelConfig:
    """ROSALIA model shape and weights."""

    size: str = "tiny"  # tiny | 7b
    checkpoint: Optional[str] = None  # HF-format checkpoint folder or URI
    llm_path: Optional[str] = None  # optional real LM (e.g. SmolLM2 GGUF) for the tiny model
    image_size: int = 256  # SAM input side (1024 for 7b)
    clip_size: int = 64  # CLIP input side (224 for 7b)
    hidden_size: int = 64
    num_layers: int = 2
    sam_patch: int = 16  # tiny: SAM patch side (the low-res mask is 4x the image_size / sam_patch grid)
    sam_channels: int = 32  # tiny: SAM prompt/mask-decoder width (the final mask features have 1/8 of it)
    sam_hidden: int = 64  # tiny: SAM image-encoder width (each patch is embedded linearly into this)
    sam_layers: int = 2  # tiny: SAM image-encoder transformer layers
    presence_head: bool = True  # gate masks with an explicit presence decision
    presence_threshold: float = 0.5  # mask is empty when p(present) < this
    mask_size: int = 0  # label/mask side for training and eval; 0: image_size
    max_new_tokens: int = 24  # answer generation length
    dtype: str = "auto"  # auto | float32 | bfloat16


@dataclass
class TrainConfig:
    """ROSALIA fine-tuning on Ray Train."""

    data: Optional[str] = None
    extra_data: list[str] = field(default_factory=list)  # more run folders (train split); their studies replace data's
    out: str = "checkpoints"
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    torch_threads: int = 0  # intra-op threads of a CPU worker; 0: cpus_per_worker (Ray's reservation is logical)
    use_gpu: bool = False
    deepspeed: bool = False  # ZeRO-2 engine where the backend supports it
    batch_size: int = 16
    lr: float = 3e-4
    warmup_steps: int = 100
    max_steps: int = 1000
    max_minutes: float = 0.0  # 0: no time limit
    epochs: int = 15
    grad_clip: float = 1.0
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    ce_weight: float = 0.5
    bce_weight: float = 5.0
    dice_weight: float = 1.0
    presence_weight: float = 1.0
    global_positive_repeat: int = 1  # global positives (few, multi-instance targets) per epoch
    negative_ratio: float = 1.0  # negatives per positive in an epoch (SPEC: 1:1)
    pairs_per_image: int = 1  # up to this many of an image's pairs next to each other in the epoch (shared SAM pass)
    augment: bool = False  # exposure jitter + small shifts of training images (rosalia.data.AugmentedPairs)
    paraphrase_prob: float = 0.0  # chance a training pair is asked with one of its paraphrases (rosalia.paraphrased)
    freeze_vision: bool = True  # freeze CLIP tower, projector, SAM image/prompt encoders (false for random tiny)
    checkpoint_every: int = 100
    eval_every: int = 200
    seed: int = 0
    name: Optional[str] = None  # Ray Train run name; default keyed by --out (rosalia.train_run)
    resume: str = "auto"  # auto (resume the run's checkpoints if any) | fresh (delete them, start over) | require
    storage: Optional[str] = None  # Ray Train run storage (URI); default <store.uri>/train-runs
    precision: str = "auto"  # auto (bf16 on GPUs that have it, else fp32) | bf16 | fp32
    zero_stage: int = 2  # DeepSpeed ZeRO stage when train.deepspeed
    num_to_keep: int = 2  # checkpoints kept by validation gIoU (the latest is always kept)
    keep_snapshots: int = 0  # every N steps (and at the end) rank 0 exports the model to <out>-snapshots/step_NNNNNNNN; 0: off
    max_failures: int = 0  # Ray Train worker-group restarts before the run fails
    val_max_batches: int = 8  # validation batches per evaluation (0: the whole split)
    log_every: int = 10


@dataclass
class EvalConfig:
    checkpoint: Optional[str] = None
    data: Optional[str] = None
    out: str = "eval"
    split: str = "test"
    batch_size: int = 16
    cleanup_min_component_frac: float = 0.0  # 0 disables connected-component cleanup
    max_examples: int = 8
    paraphrases: bool = True  # also score the pairs asked with their first paraphrase, side by side


@dataclass
class AutoscalingConfig:
    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 2.0
    max_ongoing_requests: int = 8
    upscale_delay_s: float = 2.0
    downscale_delay_s: float = 10.0
    look_back_period_s: float = 30.0  # window over which ongoing requests are averaged
    metrics_interval_s: float = 10.0


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    checkpoint: Optional[str] = None
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.02
    autoscaling: AutoscalingConfig = field(default_factory=AutoscalingConfig)
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    allow_anonymous: bool = False
    api_keys_file: Optional[str] = None
    max_upload_bytes: int = 30_000_000
    max_image_pixels: int = 50_000_000
    max_instruction_chars: int = 300
    max_queued_requests: int = 64  # in-flight bound of the ingress; beyond it: 503 + Retry-After
    retry_after_s: int = 1
    app_name: str = "ils"
    route_prefix: str = "/"
    ingress_num_cpus: float = 0.1
    segmenter: str = "rosalia.segmenter:Segmenter"  # import path of the batched inference class
    model_delay_s: float = 0.0  # extra seconds per batch (tests/benchmarks of scaling only)
    request_timeout_s: float = 120.0


@dataclass
class Config:
    store: StoreConfig = field(default_factory=StoreConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    gen: GenConfig = field(default_factory=GenConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)


def _explain(exc: OmegaConfBaseException, origin: str, fallback_key: str | None = None) -> ConfigError:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or fallback_key
    msg = str(exc).splitlines()[0]
    where = f"key '{key}'" if key else "configuration"
    return ConfigError(f"{origin}: invalid {where}: {msg}")


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Merge the schema defaults, a YAML file and `key=value` overrides into a typed Config."""
    base = OmegaConf.structured(Config)
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        file_cfg = OmegaConf.load(path)
    except Exception as exc:  # yaml errors: one line, with the position
        raise ConfigError(f"{path}: not valid YAML: {'; '.join(str(exc).split(chr(10)))}") from exc
    if not isinstance(file_cfg, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (store:, ray:, ...)")
    try:
        merged = OmegaConf.merge(base, file_cfg)
    except OmegaConfBaseException as exc:
        raise _explain(exc, str(path)) from exc
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise _explain(exc, f"override {item!r}", item.partition("=")[0].strip()) from exc
    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise _explain(exc, str(path)) from exc
    assert isinstance(cfg, Config)
    return cfg


def to_yaml(cfg: Config) -> str:
    """The config as YAML (for run records and runtime_env shipping)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Config) -> dict[str, Any]:
    out = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    assert isinstance(out, dict)
    return out  # type: ignore[return-value]


def as_dictconfig(cfg: Config) -> DictConfig:
    return OmegaConf.structured(cfg)

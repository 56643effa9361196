"""The options of one training run: one dataclass, saved as ``RUN/config.yaml`` and loadable again."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pneumoscan.data import defaults
from pneumoscan.errors import ConfigError

OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")
SCHEDULERS = ("cosine", "plateau", "none")
SAMPLERS = ("shuffle", "weighted")
MONITORS = ("val_loss", "val_auc")
SPLITS = ("auto", "patient", "source")
PRECISIONS = ("auto", "32-true", "16-mixed", "bf16-mixed", "64-true")
DISTILL_VIEWS = ("augmented", "original")
THRESHOLD_RULES = ("balanced", "youden", "youden-median", "sens95-median")


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    # The CLI is generated from these fields: the help text and choices live next to the default.
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    """Everything that decides a training run. ``pneumoscan train --config RUN/config.yaml`` reproduces it."""

    # data
    data: str | None = _opt(None, "dataset root, CSV manifest or .npz (default: ../shared/data/chest_xray "
                                  "or $PNEUMOSCAN_DATA)")
    split: str = _opt("auto", "'source': use the source's own train/val splits; 'patient': carve validation "
                              "by patient from the training pool; 'auto': the source's own when its validation "
                              f"split has at least {defaults.MIN_SOURCE_VAL_PER_CLASS} images of each class "
                              "(MedMNIST), else by patient (the official Kermany val/ has 8 + 8)", SPLITS)
    val_fraction: float = _opt(defaults.VAL_FRACTION, "share of patients (per class) held out for validation")
    test_fraction: float = _opt(defaults.TEST_FRACTION, "share of patients (per class) held out as a test split when the data "
                                     "has none (with --split patient); never trained on or used to select "
                                     "anything: `pneumoscan evaluate RUN` scores it (0: none)")
    image_size: int = _opt(128, "input size in pixels (images are cached once at this size)")
    # stretch by default: the public Kermany copies (and most re-published sets) were stretched to squares,
    # so a model trained on them must see full-size radiographs stretched too. Measured on the 150
    # full-resolution originals with the default run: sensitivity 0.94 with stretch, 0.85 with pad.
    fit: str = _opt(defaults.FIT, "how images are made square, here and at inference (stored with the model)",
                    ("pad", "crop", "stretch"))
    limit_train_images: int | None = _opt(None, "use at most this many training images (quick runs)")
    limit_val_images: int | None = _opt(None, "use at most this many validation images (quick runs)")
    # model
    # ImageNet-pretrained EfficientNet-Lite0 by default: on the new-site test data it ranks and detects
    # better than every network trained here from scratch (docs/training.md, "ImageNet transfer").
    model: str = _opt("efficientnet-lite0", "network from the registry (see `pneumoscan train --list-models`)")
    members: int = _opt(1, "train an ensemble of this many independently initialised networks as one model "
                           "(mean logit; each member learns from its own loss)")
    pretrained: str | None = _opt("auto", "initial weights: 'auto' (ImageNet where the network's weights ship "
                                          "with pneumoscan: efficientnet-lite0/1/2; random otherwise), 'imagenet', "
                                          "'none', or a .safetensors/.pt/.ckpt state dict")
    # The head starts from nothing while the pretrained layers already compute useful features: they move
    # at a third of its rate (the backbone then runs at 1e-3 with the default --lr, the rate measured to
    # fine-tune EfficientNet-Lite0 well here; docs/training.md).
    pretrained_lr_scale: float = _opt(1 / 3, "learning rate of the pretrained layers as a share of --lr (the head "
                                             "gets --lr); only with --pretrained")
    freeze_epochs: float = _opt(0.0, "epochs during which the pretrained layers are frozen and the head learns "
                                     "alone (only with --pretrained; 0: none)")
    channels_last: bool = _opt(True, "NHWC memory format (faster convolutions on CPU and tensor cores)")
    # optimisation
    # 6: the pretrained default fits in about 10 minutes on 2 CPU cores; 5 left it under-trained (new-site
    # ROC-AUC 0.985 against 0.993, docs/training.md).
    epochs: int = _opt(6, "maximum number of epochs")
    batch_size: int = _opt(64, "images per batch (per device)")
    lr: float = _opt(3e-3, "peak learning rate")
    weight_decay: float = _opt(1e-4, "weight decay (decoupled for adamw)")
    optimizer: str = _opt("adamw", "optimiser", OPTIMIZERS)
    scheduler: str = _opt("cosine", "learning-rate schedule: cosine with linear warm-up, or "
                                    "ReduceLROnPlateau on the monitored metric", SCHEDULERS)
    warmup_epochs: float = _opt(1.0, "linear warm-up length for the cosine schedule, in epochs")
    grad_clip: float = _opt(1.0, "clip the gradient norm to this value (0: off)")
    sampler: str = _opt("shuffle", "'weighted' oversamples the minority class (then the loss is not "
                                   "class-weighted)", SAMPLERS)
    class_weights: bool = _opt(True, "weight the loss by inverse class frequency (ignored with --sampler weighted)")
    monitor: str = _opt("val_loss", "metric that picks the best checkpoint and drives early stopping", MONITORS)
    # Off by default: the cosine schedule is a fixed budget that ends at a low learning rate, and the
    # validation loss is noisy in its high-rate phase (patience 4 stopped the default recipe at epoch 6,
    # validation AUC 0.979, where the full 12 epochs reach 0.994).
    early_stopping: int = _opt(0, "stop after this many epochs without improvement of the monitored metric (0: off)")
    max_time: float | None = _opt(None, "stop training after this many minutes (the best weights are kept)")
    seed: int = _opt(0, "seed for the split, initialisation, sampling and augmentation")
    # augmentation (kornia, on batches, on the training device; never on validation)
    augment: bool = _opt(True, "augment training batches")
    flip: float = _opt(0.5, "probability of a horizontal flip")
    rotation: float = _opt(10.0, "maximum rotation in degrees")
    zoom: float = _opt(0.1, "maximum zoom in or out (0.1: scale 0.9 to 1.1)")
    shift: float = _opt(0.1, "maximum shift as a fraction of the image size")
    brightness: float = _opt(0.1, "maximum brightness change")
    contrast: float = _opt(0.1, "maximum contrast change (0.1: factor 0.9 to 1.1)")
    # Acquisition-shift augmentation: another hospital's radiographs differ in exposure curve, contrast
    # processing, sharpness, noise and framing, which the geometric and linear changes above do not cover.
    gamma: float = _opt(0.5, "random gamma in [1/(1+g), 1+g] (0: off)")
    clahe: float = _opt(0.0, "probability of contrast-limited adaptive histogram equalisation (CLAHE)")
    blur: float = _opt(0.2, "probability of a Gaussian blur (sigma 0.1 to 1.5 px)")
    sharpen: float = _opt(0.2, "probability of sharpening")
    noise: float = _opt(0.02, "standard deviation of Gaussian noise added to half of the images (0: off)")
    # Framing: a 20 % border crop (64 % of the area) made normal radiographs look like pneumonia to models
    # trained with crops down to 70 %, and Grad-CAM lit the border; crops reach half the area, and random
    # bands of each border are blanked so that what lies at the frame cannot decide (docs/training.md).
    crop_scale: float = _opt(0.5, "random-resized crop keeping at least this share of the area, aspect 3:4 "
                                  "to 4:3 (0: off)")
    border: float = _opt(0.5, "probability of blanking a random band (up to 0.12 of the side) along each "
                              "border, as collimation or a cropped frame would (0: off)")
    equalize: float = _opt(0.2, "probability of histogram equalisation (a site's flattened tone curve)")
    # A crop of a cached --image-size picture is blurred when it is resized back up, while a tighter frame
    # at inference is resized down from the file: the network learnt "zoomed in = soft" and called sharp
    # close-ups pneumonia. Crops come from a larger copy of each training image instead.
    crop_source: float = _opt(1.5, "random crops are cut from training images kept at this multiple of "
                                   "--image-size, so zoomed views stay sharp (1: crop the --image-size image)")
    label_smoothing: float = _opt(0.1, "label smoothing of the training targets (0.1: 0.05 and 0.95)")
    # distillation: a model that already ranks well gives each augmented image a calibrated soft target
    teacher: str | None = _opt(None, "learn from these models' calibrated probabilities as well as the labels: "
                                     "run folders or model files, comma-separated (their mean probability), or "
                                     "'default' (the bundled model); they score each augmented training batch")
    distill_weight: float = _opt(0.9, "with --teacher: the teacher's share of the training target "
                                      "(weight * teacher probability + (1 - weight) * label)")
    distill_view: str = _opt("augmented", "with --teacher: 'augmented': the teacher scores each augmented training "
                                          "batch, the view the student learns from; 'original': it scores each "
                                          "training image once, un-augmented, before training (cheaper; the target "
                                          "then describes the whole image, not the crop)", DISTILL_VIEWS)
    ema: float = _opt(0.995, "decay of an exponential moving average of the weights, which is what is "
                           "validated and saved (0: off)")
    temperature_scaling: bool = _opt(True, "after training, fit a temperature on validation so that the stored "
                                           "probabilities are calibrated (ranking and decisions unchanged)")
    # A triage tool states its sensitivity: the stored point is the bootstrap median of the highest threshold
    # with validation sensitivity >= 0.95. "balanced" (probability 0.5) assumes the fit reached the
    # class-balanced optimum; the pretrained default does not in 8 epochs (on its validation patients,
    # sensitivity 0.84 and specificity 1.00 at 0.5, ROC-AUC 0.996: docs/training.md).
    threshold_rule: str = _opt("sens95-median", "how the stored threshold is chosen: balanced = probability 0.5 of the "
                                         "class-balanced model; youden = Youden's J on validation; "
                                         "youden-median / sens95-median = the median over bootstrap resamples "
                                         "of validation of Youden's J (middle of the gap) or of the highest "
                                         "threshold with sensitivity >= 0.95", THRESHOLD_RULES)
    # hardware and scale-out (all through Lightning)
    accelerator: str = _opt("auto", "cpu, gpu, cuda, mps or auto")
    devices: str = _opt("auto", "devices per node: a number, a list like '0,1', or auto")
    num_nodes: int = _opt(1, "number of nodes")
    strategy: str = _opt("auto", "Lightning strategy: auto, ddp, ddp_spawn, fsdp, ...")
    precision: str = _opt("auto", "auto: 16-mixed on a CUDA GPU, 32-true otherwise", PRECISIONS)
    workers: int = _opt(-1, "data loader worker processes (-1: 0 on CPU where images are already in RAM, "
                            "4 on GPU)")
    threads: int | None = _opt(None, "CPU threads per process (default: the cores divided by the processes)")
    # output
    out: str = _opt("runs", "folder that receives the run folder")
    run_name: str | None = _opt(None, "name of the run folder (default: <timestamp>-<model>)")
    progress: bool = _opt(True, "show a progress bar")

    def __post_init__(self) -> None:
        self.validate()

    @property
    def class_balanced(self) -> bool:
        """Whether training weighs both classes equally (loss weights or the weighted sampler)."""
        return self.class_weights or self.sampler == "weighted"

    @property
    def train_image_size(self) -> int:
        """The side at which training images are kept: larger than ``image_size`` when crops are cut."""
        if not self.augment or self.crop_scale <= 0:
            return self.image_size
        return max(self.image_size, round(self.image_size * self.crop_source))

    @property
    def initial_weights(self) -> str | None:
        """What ``--pretrained`` resolves to for this network: ``"imagenet"``, a file, or None (random)."""
        if self.pretrained in (None, "none") or self.members > 1:
            return None
        if self.pretrained == "auto":
            from pneumoscan.models.pretrained import IMAGENET_WEIGHTS

            return "imagenet" if self.model in IMAGENET_WEIGHTS else None
        return self.pretrained

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the option when a value is out of range."""
        parse_devices(str(self.devices))  # before any data is cached or a run folder written
        for name in ("optimizer", "scheduler", "sampler", "monitor", "split", "precision", "fit", "threshold_rule",
                     "distill_view"):
            choices = type(self).__dataclass_fields__[name].metadata["choices"]
            if getattr(self, name) not in choices:
                raise ConfigError(f"--{name.replace('_', '-')}: {getattr(self, name)!r} is not one of "
                                  f"{', '.join(choices)}")
        positive = {"image_size": self.image_size, "epochs": self.epochs, "batch_size": self.batch_size,
                    "lr": self.lr, "num_nodes": self.num_nodes, "members": self.members}
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"--{name.replace('_', '-')}: must be positive, not {value}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"--val-fraction: must be between 0 and 1, not {self.val_fraction}")
        if not 0.0 <= self.test_fraction < 1.0 - self.val_fraction:
            raise ConfigError(f"--test-fraction: must be at least 0 and below 1 - val-fraction, not {self.test_fraction}")
        if self.threshold_rule == "balanced" and not self.class_balanced:
            raise ConfigError("--threshold-rule balanced: needs a class-balanced model (--class-weights or "
                              "--sampler weighted); choose a rule that uses validation otherwise")
        if not 0.0 < self.pretrained_lr_scale <= 1.0:
            raise ConfigError(f"--pretrained-lr-scale: must be in (0, 1], not {self.pretrained_lr_scale}")
        if not 0.0 <= self.freeze_epochs < self.epochs:
            raise ConfigError(f"--freeze-epochs: must be at least 0 and below --epochs, not {self.freeze_epochs}")
        if self.members > 1 and self.pretrained not in (None, "none", "auto"):
            raise ConfigError("--pretrained: initial weights are for one network, not an ensemble (--members 1)")
        if not 1.0 <= self.crop_source <= 4.0:
            raise ConfigError(f"--crop-source: must be between 1 and 4, not {self.crop_source}")
        for name in ("gamma", "clahe", "blur", "sharpen", "noise", "crop_scale", "border", "equalize",
                     "label_smoothing", "ema"):
            if not 0.0 <= getattr(self, name) < (10.0 if name == "gamma" else 1.0):
                raise ConfigError(f"--{name.replace('_', '-')}: out of range: {getattr(self, name)}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ConfigError(f"--distill-weight: must be between 0 and 1, not {self.distill_weight}")
        for name in ("limit_train_images", "limit_val_images", "max_time", "threads"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"--{name.replace('_', '-')}: must be positive, not {value}")
        self.devices = str(self.devices)


def parse_devices(value: str) -> Any:
    """Lightning's ``devices`` from the option's text: ``auto``, ``-1`` (all), a count, or a list ``0,1``."""
    if value in ("auto", "-1"):
        return value if value == "auto" else -1
    try:
        if "," in value:
            return [int(v) for v in value.split(",") if v.strip()]
        return int(value)
    except ValueError:
        raise ConfigError(f"--devices: {value!r} is not a number, a list like '0,1' or auto") from None

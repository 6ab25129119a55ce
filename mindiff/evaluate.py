"""`python -m mindiff.evaluate ckpt=PATH n=5000 [out=metrics.json steps=... seed=0 fid=false]`

Scores a checkpoint offline against its dataset's held-out split and writes the metrics as JSON:
for a denoiser, class accuracy of n class-conditional samples and their Fréchet distance in the
features of mindiff's evaluation classifier (with the real-data floor beside it, and the
classifier's own held-out accuracy); for an autoencoder, PSNR/SSIM and the feature distance of
reconstructions. `dataset_root=DIR` points at the data when it has moved since training.
`steps`, `sampler`, `guidance`, `classifier_epochs` and `min_classifier_accuracy` default to the run's own.
"""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from mindiff.build import build, from_checkpoint, read_checkpoint
from mindiff.cli import check_cli_values, run_command, sampling_overrides
from mindiff.config import CONF, PRECISIONS, check_choice
from mindiff.files import check_writable_dir, check_writable_file, save_text
from mindiff.metrics import Evaluator, classifier_floor
from mindiff.runtime import autocast, pick_device


@dataclass
class EvaluateArgs:
    ckpt: str
    n: int = 5000
    out: Optional[str] = None  # default: metrics.json beside the checkpoint
    steps: Optional[int] = None  # steps, sampler, guidance: default the run's own schedule settings
    sampler: Optional[str] = None
    guidance: Optional[float] = None
    seed: int = 0
    dataset_root: Optional[str] = None
    classifier_epochs: Optional[int] = None  # these two: default the run's own eval settings
    min_classifier_accuracy: Optional[float] = None
    fid: bool = False
    inception_weights: Optional[str] = None
    cache_dir: str = field(default_factory=lambda: os.environ.get("MINDIFF_CACHE", "~/.cache/mindiff"))
    device: str = "auto"
    precision: str = "fp32"


def run_eval_setting(cfg, key: str, given):
    """The value given on the command line, else the run's own `eval.<key>`, else (a run from before the
    key existed) conf/eval/default.yaml's."""
    if given is not None:
        return given
    if key in cfg.get("eval", {}):
        return cfg.eval[key]
    return OmegaConf.load(CONF / "eval" / "default.yaml")[key]


def evaluate(args: EvaluateArgs) -> dict:
    check_cli_values("eval", n=args.n, classifier_epochs=args.classifier_epochs,
                     min_classifier_accuracy=args.min_classifier_accuracy, seed=args.seed)
    schedule = sampling_overrides(args.steps, args.sampler, args.guidance)
    check_choice("precision", args.precision, PRECISIONS)
    device = pick_device(args.device, key="device")
    out = check_writable_file(args.out or Path(args.ckpt).with_name("metrics.json"), "out")
    check_writable_dir(args.cache_dir, "cache_dir (or $MINDIFF_CACHE)")
    state = read_checkpoint(args.ckpt)
    model, objective, cfg = from_checkpoint(state, args.ckpt, device, schedule)
    dataset_cfg = OmegaConf.to_container(cfg.dataset)
    if args.dataset_root:
        dataset_cfg["root"] = args.dataset_root
    if "download" in dataset_cfg:  # evaluation never downloads
        dataset_cfg["download"] = False
    if "cache_dir" in dataset_cfg:  # a folder named in a file is never written to: caches come from here
        dataset_cfg["cache_dir"] = args.cache_dir
    data = build(dataset_cfg, "dataset", args.ckpt)
    evaluator = Evaluator(data, device, args.cache_dir, run_eval_setting(cfg, "classifier_epochs", args.classifier_epochs),
                          args.inception_weights, args.fid,
                          classifier_floor(cfg.dataset._target_,
                                           run_eval_setting(cfg, "min_classifier_accuracy", args.min_classifier_accuracy)))
    with autocast(device, args.precision):
        scores = objective.evaluate(model, data, evaluator, args.n, args.seed)
    result = {"ckpt": str(args.ckpt), "kind": state.get("kind"), "epoch": state["epoch"], "n": args.n, **scores}
    save_text(json.dumps(result, indent=2) + "\n", out)
    return {"metrics": result, "out": out}


def main(argv=None) -> None:
    result = run_command("mindiff.evaluate", EvaluateArgs, evaluate, argv, __doc__)
    for key, value in result["metrics"].items():
        print(f"{key:>22}: {value:.4f}" if isinstance(value, float) else f"{key:>22}: {value}")
    print(f"wrote {result['out']}")


if __name__ == "__main__":
    main()

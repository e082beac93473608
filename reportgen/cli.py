"""`reportgen MODEL [INPUT ...] -o report.html`, `reportgen demo` and `reportgen compare MODEL ...`
(`build_compare_parser`): a thin shell over the API.

Only argparse is imported at the top: `--help` and `--version` must answer without torch.
User mistakes (`ReportError`) become one `reportgen: error: ...` line and exit status 2;
`--debug` shows the traceback instead. Results go to stdout, progress and errors to stderr.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reportgen._version import __version__

EXAMPLES = """\
examples:
  reportgen demo -o demo-report.html
  reportgen demo --compare -o demo-compare.html
  reportgen torchvision:resnet18 cat.jpg dog.png -o report.html
  reportgen torchvision:resnet50 --weights DEFAULT photos/ -o r.html --json r.json
  reportgen timm:resnet18 --model-arg num_classes=10 --weights model.ckpt photos/ -o r.html
  reportgen hf:./vit-folder cat.jpg -o r.html
  reportgen my_models.py:build_net --model-arg width=64 --weights ckpt.pt images/ -o r.html
  reportgen torchvision:resnet18 --layers 'layer1.*' --max-channels 16 --device cpu
  reportgen compare my_models.py:build_net --weights a.pt --weights b.pt images/ -o compare.html
"""


def _int_list(text: str, count: int | None, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{option} wants integers separated by commas, got {text!r}") from None
    if count is not None and len(values) not in ((count,) if isinstance(count, int) else count):
        raise argparse.ArgumentTypeError(f"{option} wants {count} integers, got {text!r}")
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{option} values must be positive, got {text!r}")
    return values


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"wants numbers separated by commas, got {text!r}") from None


def _int_at_least(lowest: int, wanted: str) -> Any:
    """An argparse type: an integer >= `lowest`, refused with `wanted` in the message."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"wants {wanted}, got {text!r}") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"wants {wanted}, got {text!r}")
        return value

    return parse


_positive = _int_at_least(1, "a positive integer")
_non_negative = _int_at_least(0, "0 or a positive integer")


DEFAULT_MAX_SIZE_MB = 6.0  # = size_budget.DEFAULT_MAX_SIZE_MB (not imported: it pulls in torch)
DEFAULT_SEED = 0  # = models.DEFAULT_SEED (not imported: it pulls in torch)
MAX_SEED = 2**63 - 2  # = models.MAX_SEED


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"wants an integer from 0 to {MAX_SEED}, got {text!r}")
    return value


def _megabytes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"wants a size in MB, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"wants a size in MB, 0 or more (0: no limit), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reportgen",
        description="Turn a PyTorch CNN and a few inputs into one self-contained HTML report: "
        "summary, filters, feature maps, predictions, statistics and alerts. "
        "`reportgen demo` renders the built-in demo model; `reportgen compare --help` compares models.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL",
                        help="torchvision:NAME, timm:NAME, hf:FOLDER (a transformers save_pretrained folder), "
                             "path/to/file.py:FACTORY, package.module:FACTORY, a TorchScript/.pt2/pickled "
                             "model file, or `demo`")
    parser.add_argument("inputs", metavar="INPUT", nargs="*",
                        help="image files, folders (recursive) or globs; .pt/.npy/.npz tensors; "
                             "none: synthetic probe inputs")
    out = parser.add_argument_group("output")
    out.add_argument("-o", "--output", metavar="PATH", help="HTML file to write (default: report.html; demo: demo-report.html)")
    out.add_argument("--json", metavar="PATH", help="also write the report's numbers as JSON")
    out.add_argument("--title", metavar="T", help="report title")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bars or messages on stderr")
    out.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    out.add_argument("--version", action="version", version=f"reportgen {__version__}")
    out.add_argument("--compare", dest="demo_compare", action="store_true",
                     help="with MODEL `demo`: compare the demo model's weights after epochs 1, 6 and 12 of "
                          "its training (`reportgen compare`'s page; default -o demo-compare.html)")

    model = parser.add_argument_group("model")
    model.add_argument("--weights", metavar="W",
                       help="checkpoint PATH (state_dict or checkpoint dict, e.g. a Lightning .ckpt: a prefix "
                            "such as `model.` on every key is found and stripped), or for torchvision: DEFAULT "
                            "or an enum name")
    model.add_argument("--weights-key", metavar="KEY",
                       help="the checkpoint entry to load, e.g. state_dict_ema or model_ema (default: the raw "
                            "weights; the report says which entries there were)")
    model.add_argument("--weights-partial", action="store_true",
                       help="load the checkpoint tensors that fit by name and shape and leave the rest at "
                            "their init, listed in the report (default: a partial match is refused)")
    _model_basics(model)

    run = parser.add_argument_group("analysis")
    run.add_argument("--layers", metavar="GLOB", action="append", default=[],
                     help="visualise modules whose qualified name matches (repeatable; default: every conv)")
    run.add_argument("--max-channels", metavar="N", type=_positive, default=64,
                     help="channels drawn per layer (default 64; statistics always cover all)")
    run.add_argument("--max-inputs-shown", metavar="N", type=_positive, default=8,
                     help="inputs whose feature maps are drawn (default 8; statistics use all inputs)")
    run.add_argument("--tile-size", metavar="PX", type=_positive, default=32,
                     help="feature-map tiles are average-pooled to at most this many pixels a side (default 32: a 32x32 CIFAR map is drawn whole, a 56x56 map halved)")
    run.add_argument("--filter-scale", choices=("per-filter", "shared"), default="per-filter",
                     help="per-filter min-max (default) or one symmetric diverging scale per layer")
    run.add_argument("--tap", choices=("activation", "conv"), default="activation",
                     help="where each conv is observed for maps, statistics and alerts: after the activation that acts on it (default; e.g. after BN, the residual add and ReLU, named per layer) or its raw output")
    run.add_argument("--batch-size", metavar="N", type=_positive, default=16, help="inputs per forward pass (default 16)")
    run.add_argument("--workers", metavar="N", type=_non_negative, default=None,
                     help="worker processes that decode the next input files while the model runs (default: one "
                          "per core beyond the first, at most 4, the cores shared among torchrun's ranks on a node; "
                          "0: decode between forward passes); the report is the same")
    run.add_argument("--device", metavar="D", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    run.add_argument("--seed", metavar="N", type=_seed, default=DEFAULT_SEED,
                     help=f"seeds the random init of models built without weights, probe noise and synthetic "
                          f"inputs (default {DEFAULT_SEED}: every run gives the same report); recorded in it")

    _input_groups(parser)

    size = parser.add_argument_group("size, exports and viewing")
    size.add_argument("--max-size", metavar="MB", type=_megabytes, default=DEFAULT_MAX_SIZE_MB,
                      help=f"keep the HTML under MB megabytes by drawing smaller tiles, fewer channels, then "
                           f"fewer inputs, without a second forward pass (default {DEFAULT_MAX_SIZE_MB:g}; 0: no limit)")
    size.add_argument("--images", metavar="DIR",
                      help="also write every grid as a PNG into DIR: filters--<anchor>.png, "
                           "maps--<anchor>--<input>.png, input--<input>.png")
    size.add_argument("--tensorboard", metavar="DIR",
                      help="also write the grids and per-channel histograms as TensorBoard events into DIR "
                           "(needs: pip install tensorboard)")
    size.add_argument("--open", action="store_true", help="open the report in the default web browser when written")

    impact = parser.add_argument_group(
        "impact and robustness",
        "which filters matter (ablation over labelled inputs) and how they react when the input changes")
    impact.add_argument("--ablation", action="store_true",
                        help="zero each filter's output in turn and rank filters by the loss increase over all "
                             "inputs (true labels from --dataset/--label-pattern, else the model's own "
                             "predictions); also reports misfiring filters")
    impact.add_argument("--ablation-layers", metavar="GLOB", action="append", default=[],
                        help="layers to ablate (repeatable; default: the layers drawn)")
    impact.add_argument("--ablation-max-channels", metavar="N", type=_channels_or_all, default=16,
                        help="ablate the first N channels of each layer (default 16; `all` for every channel)")
    impact.add_argument("--misfiring", action="store_true",
                        help="list filters that fire much harder on misclassified inputs (needs true labels)")
    impact.add_argument("--probes", metavar="LIST",
                        help="perturb the shown inputs and compare feature maps: any of "
                             "rotate,noise,blur,brightness,fgsm (or all)")
    impact.add_argument("--probe-strength", metavar="KIND=X,...",
                        help="rotate=degrees (90), noise=fraction of the input std (0.1), blur=sigma px (1), "
                             "brightness=fraction (0.3); one number sets noise, blur and brightness")
    impact.add_argument("--fgsm-epsilon", metavar="EPS", type=float, default=0.03,
                        help="FGSM step in [0, 1] pixel units when the normalisation is known, else in the "
                             "model's input units (default 0.03)")

    insight = parser.add_argument_group(
        "insight and alerts",
        "statistics, Grad-CAM, the inputs that excite each channel most, embedding, alert thresholds")
    insight.add_argument("--top-k", metavar="K", type=_non_negative, default=5,
                         help="keep the K inputs that excite each shown channel most (default 5; 0: off); "
                              "their crops are drawn when there are more inputs than --max-inputs-shown")
    insight.add_argument("--top-k-channels", metavar="N", type=_positive, default=8,
                         help="channels per layer whose top-K crops are drawn (default 8)")
    insight.add_argument("--no-cam", dest="cam", action="store_false",
                         help="skip Grad-CAM (and the check of which layers reach the output)")
    insight.add_argument("--cam-layer", metavar="NAME",
                         help="module for Grad-CAM (default: the last convolution, or after it the last "
                              "transformer block: its first norm for ViT-like models)")
    insight.add_argument("--rollout-heads", choices=("mean", "max"), default="mean",
                         help="attention rollout (models with nn.MultiheadAttention): fuse the heads by their "
                              "mean (default) or max")
    insight.add_argument("--no-rollout", dest="rollout", action="store_false",
                         help="skip attention rollout")
    insight.add_argument("--no-embedding", dest="embedding", action="store_false",
                         help="skip the PCA scatter of the penultimate features")
    insight.add_argument("--dead-threshold", metavar="F", type=_fraction, default=0.0,
                         help="a channel is dead when > 0 on at most this fraction of inputs (default 0: never)")
    insight.add_argument("--duplicate-threshold", metavar="COS", type=_fraction, default=0.99,
                         help="filters with cosine similarity at or above this are near-duplicates (default 0.99)")
    insight.add_argument("--explode-threshold", metavar="X", type=float, default=1e4,
                         help="alert when a channel's activations exceed this in absolute value (default 1e4)")
    return parser


def _model_basics(group: Any) -> None:
    """--model-arg, --trust-pickle and --labels: the same for `reportgen` and `reportgen compare`."""
    group.add_argument("--model-arg", metavar="KEY=VALUE", action="append", default=[],
                       help="keyword argument for the model factory (Python literal; repeatable)")
    group.add_argument("--trust-pickle", action="store_true",
                       help="allow checkpoints/models that contain pickled Python objects (can run code!)")
    group.add_argument("--labels", metavar="FILE", help="class names: one per line, a JSON list, or a JSON {index: name} map")


def _input_groups(parser: argparse.ArgumentParser) -> None:
    """Inputs, preprocessing and labelled inputs: the same for `reportgen` and `reportgen compare`."""
    prep = parser.add_argument_group("inputs and preprocessing")
    prep.add_argument("--input-shape", metavar="C,H,W", type=lambda t: _int_list(t, None, "--input-shape"),
                      help="shape of synthetic probe inputs when no INPUT is given")
    prep.add_argument("--clip", metavar="DIR", action="append", default=[],
                      help="a folder of frame images (sorted by name) as one video clip, for models that take "
                           "(C, T, H, W); repeatable. Animated GIF/WebP/PNG files given as INPUT are clips too. "
                           "Frames are sampled evenly to T from --input-shape C,T,H,W (default 16)")
    prep.add_argument("--sample-rate", metavar="HZ", type=_positive, default=None,
                      help=".wav inputs must be sampled at this rate (default: one rate, the first file's); "
                           "nothing is resampled")
    prep.add_argument("--resize", metavar="H,W", type=lambda t: _int_list(t, None, "--resize"),
                      help="resize images to H,W (or one number: the shorter side)")
    prep.add_argument("--center-crop", metavar="H,W", type=lambda t: _int_list(t, None, "--center-crop"),
                      help="center-crop images after resizing")
    prep.add_argument("--mean", metavar="a,b,c", type=_float_list, help="per-channel mean to subtract (after scaling to [0, 1])")
    prep.add_argument("--std", metavar="a,b,c", type=_float_list, help="per-channel std to divide by")
    prep.add_argument("--grayscale", action="store_true", help="convert images to one channel")

    sources = parser.add_argument_group("labelled inputs")
    sources.add_argument("--dataset", metavar="DIR",
                         help="ImageFolder-style folder, one subfolder per class: labelled inputs "
                              "(class names from the folder names unless --labels is given)")
    sources.add_argument("--label-pattern", metavar="REGEX",
                         help="read each input's true class from its path: the regex's first group, "
                              r"a class index or name (e.g. '_(\d+)\.png$')")
    sources.add_argument("--strict", action="store_true",
                         help="stop at an unreadable file found in a folder, a glob or --dataset (default: "
                              "skip it and list it in the report; a file named on its own is always an error)")


COMPARE_EXAMPLES = """\
examples:
  reportgen compare resnet.py:build --weights a.pt --weights b.pt photos/ -o compare.html --json compare.json
  reportgen compare resnet.py:build --weights 'ckpt/epoch_*.pt' --dataset val/ -o run.html
  reportgen compare torchvision:resnet18 --weights DEFAULT --against torchvision:resnet34 \\
      --against-weights DEFAULT photos/ -o r18-vs-r34.html
"""


def build_compare_parser() -> argparse.ArgumentParser:
    """`reportgen compare`: checkpoints of one model (--weights twice or more, or a glob), or two
    models (--against)."""
    parser = argparse.ArgumentParser(
        prog="reportgen compare",
        description="What changed between two models, or along a training run, on the same inputs: CKA per "
                    "layer and layer by layer, weight changes per layer and filter, channel correlations, "
                    "prediction flips; one self-contained HTML file.",
        epilog=COMPARE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help="as for `reportgen MODEL` (model A, or every checkpoint's)")
    parser.add_argument("inputs", metavar="INPUT", nargs="*",
                        help="image files, folders or globs; .pt/.npy/.npz tensors; none: synthetic probe inputs")
    out = parser.add_argument_group("output")
    out.add_argument("-o", "--output", metavar="PATH", help="HTML file to write (default: compare.html)")
    out.add_argument("--json", metavar="PATH", help="also write the comparison's numbers as JSON")
    out.add_argument("--title", metavar="T", help="report title")
    out.add_argument("--max-size", metavar="MB", type=_megabytes, default=DEFAULT_MAX_SIZE_MB,
                     help=f"keep the HTML under MB megabytes by drawing fewer flips and filters "
                          f"(default {DEFAULT_MAX_SIZE_MB:g}; 0: no limit)")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bars or messages on stderr")
    out.add_argument("--debug", action="store_true", help="show tracebacks for errors")

    model = parser.add_argument_group("models")
    model.add_argument("--weights", metavar="W", action="append", default=[],
                       help="a checkpoint of MODEL (repeatable, in order: the first is A, the last B; three or "
                            "more make a training run); a glob such as 'ckpt/epoch_*.pt' is expanded and sorted "
                            "naturally (epoch_2 before epoch_10). With --against: model A's weights")
    model.add_argument("--against", metavar="MODEL_B", help="a second model to compare MODEL with (model B)")
    model.add_argument("--against-weights", metavar="W", help="model B's weights")
    model.add_argument("--weights-key", metavar="KEY", help="the checkpoint entry to load (e.g. state_dict_ema)")
    _model_basics(model)

    run = parser.add_argument_group("analysis")
    run.add_argument("--layers", metavar="GLOB", action="append", default=[],
                     help="compare modules whose qualified name matches (repeatable; default: every conv)")
    run.add_argument("--tap", choices=("activation", "conv"), default="activation",
                     help="where each conv's features are taken: after its activation (default) or its raw output")
    run.add_argument("--top-k", metavar="K", type=_non_negative, default=5,
                     help="inputs per channel whose overlap between A and B is measured (default 5; 0: off)")
    run.add_argument("--max-channels", metavar="N", type=_positive, default=64,
                     help="channels per layer whose top-K inputs are kept (default 64)")
    run.add_argument("--no-cam", dest="cam", action="store_false",
                     help="skip the Grad-CAM of the flipped inputs in both models")
    run.add_argument("--batch-size", metavar="N", type=_positive, default=16,
                     help="inputs per forward pass and per CKA batch (default 16; CKA needs 4 or more)")
    run.add_argument("--workers", metavar="N", type=_non_negative, default=None,
                     help="worker processes that decode the next input files while the models run (default as "
                          "for a report); the comparison is the same")
    run.add_argument("--device", metavar="D", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")
    run.add_argument("--seed", metavar="N", type=_seed, default=DEFAULT_SEED,
                     help=f"seeds random inits and synthetic inputs (default {DEFAULT_SEED})")
    _input_groups(parser)
    return parser


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"wants a number between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"wants a number between 0 and 1, got {text!r}")
    return value


def _channels_or_all(text: str) -> int | None:
    """A positive integer, or `all` (None): every channel."""
    if text.strip().lower() == "all":
        return None
    return _positive(text)


def _command_line(argv: Sequence[str], seed: int) -> str:
    """The command as typed, runnable as printed: `cd FOLDER && reportgen ...` with `--seed` and,
    when set, SOURCE_DATE_EPOCH, so that running it again makes the same report. Absolute paths
    inside FOLDER become relative to it; the home folder is written `~` (the shell expands it; the
    reader of a shared report does not learn it)."""
    cwd = Path.cwd()
    parts = [shlex.quote("reportgen")]
    for arg in argv:
        path = Path(arg)
        if path.is_absolute() and path.is_relative_to(cwd) and path != cwd:
            parts.append(shlex.quote(path.relative_to(cwd).as_posix()))
        else:
            parts.append(_shell_path(arg))
    if not any(arg == "--seed" or arg.startswith("--seed=") for arg in argv):
        parts += ["--seed", str(seed)]
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    date = f"SOURCE_DATE_EPOCH={shlex.quote(epoch)} " if epoch is not None else ""
    return f"cd {_shell_path(str(cwd))} && {date}" + " ".join(parts)


def _shell_path(text: str) -> str:
    """`text` quoted for the shell; an absolute path under the home folder as `~/...`."""
    home = Path(os.path.expanduser("~"))
    path = Path(text)
    if not path.is_absolute() or not home.is_absolute() or home == Path(home.anchor) or not path.is_relative_to(home):
        return shlex.quote(text)
    rest = path.relative_to(home).as_posix()
    return "~" if rest == "." else "~/" + shlex.quote(rest)


def _raise_on_sigterm(signum: int, frame: Any) -> None:
    # SIGTERM normally kills the process without running `finally`; raising lets the atomic
    # writer remove its temporary files, so an interrupted run leaves nothing behind.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    comparing = bool(args_list) and args_list[0] == "compare" and not Path("compare").exists()
    parser = build_compare_parser() if comparing else build_parser()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and os.environ.get("RANK", "0") != "0":
        # under torchrun every rank parses the same line: rank 0 alone says what is wrong with it
        parser.error = lambda message: sys.exit(2)  # type: ignore[method-assign]
    args = parser.parse_intermixed_args(args_list[1:] if comparing else args_list)
    args.compare = comparing
    debug = args.debug
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm) if _main_thread() else None
    try:
        from reportgen.errors import RankFailed, ReportError

        try:
            return _run(args, args_list)
        except RankFailed as exc:  # under torchrun another rank failed: rank 0 prints the one line
            return exc.code
        except ReportError as exc:
            if debug:
                raise
            print(f"reportgen: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("reportgen: interrupted; nothing was written", file=sys.stderr)
            return 130
        except Exception as exc:
            if debug:
                raise
            print(f"reportgen: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
                  file=sys.stderr)
            return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if getattr(args, "compare", False):
        from reportgen.cli_compare import run_compare

        return run_compare(args, _command_line(argv, args.seed))
    if getattr(args, "demo_compare", False):
        from reportgen.cli_compare import run_demo_compare

        return run_demo_compare(args, _command_line(argv, args.seed))
    from reportgen.cli_run import run_cli

    return run_cli(args, _command_line(argv, args.seed))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

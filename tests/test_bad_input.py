"""Bad input (issue 3), each through the CLI: exit 2, ONE line naming the file and the problem,
no traceback (`--debug` shows it), and no output file left behind."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reportgen.cli import main
from reportgen.errors import ReportError
from tests.fixtures.models import tiny_cnn

REPO = Path(__file__).resolve().parents[1]
MEAN_NET = "tests.fixtures.models:ChannelMeanNet"

NET_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self, classes=4):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(6)
            self.fc = nn.Linear(6, classes)

        def forward(self, x):
            return self.fc(torch.relu(self.bn1(self.conv1(x))).mean(dim=(2, 3)))


    def build(classes=4):
        return Net(classes)


    def broken(width=3):
        raise ValueError(f"factory exploded at width {width}")
    """
)


def noisy_png(path: Path, size: int = 40) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def net_file(tmp: Path) -> Path:
    (tmp / "net.py").write_text(NET_SOURCE, encoding="utf-8")
    return tmp / "net.py"


def case_missing_file(tmp: Path) -> tuple[list[str], list[str]]:
    return [MEAN_NET, str(tmp / "nope.png")], ["input not found", "nope.png"]


def case_truncated_image(tmp: Path) -> tuple[list[str], list[str]]:
    noisy_png(tmp / "whole.png")
    data = (tmp / "whole.png").read_bytes()
    (tmp / "cut.png").write_bytes(data[: len(data) // 2])
    return [MEAN_NET, str(tmp / "cut.png")], ["cannot read image", "cut.png", "truncated"]


def case_unreadable_image(tmp: Path) -> tuple[list[str], list[str]]:
    (tmp / "garbage.jpg").write_bytes(b"this is not a JPEG at all" * 10)
    return [MEAN_NET, str(tmp / "garbage.jpg")], ["not an image PIL can read", "garbage.jpg"]


def case_unknown_suffix(tmp: Path) -> tuple[list[str], list[str]]:
    (tmp / "notes.txt").write_text("hello", encoding="utf-8")
    return [MEAN_NET, str(tmp / "notes.txt")], ["not an image PIL can read", "notes.txt", ".npy"]


def case_folder_without_images(tmp: Path) -> tuple[list[str], list[str]]:
    (tmp / "empty" / "sub").mkdir(parents=True)
    (tmp / "empty" / "readme.txt").write_text("no pictures here", encoding="utf-8")
    return [MEAN_NET, str(tmp / "empty")], ["no images", "found in folder", "empty"]


def case_glob_without_matches(tmp: Path) -> tuple[list[str], list[str]]:
    return [MEAN_NET, str(tmp / "*.jpeg")], ["no files match", "*.jpeg"]


def case_pt_holding_a_string(tmp: Path) -> tuple[list[str], list[str]]:
    torch.save("hello", tmp / "text.pt")
    return [MEAN_NET, str(tmp / "text.pt")], ["text.pt holds a str, not a tensor"]


def case_pt_holding_a_dict_without_tensors(tmp: Path) -> tuple[list[str], list[str]]:
    torch.save({"epoch": 3, "note": "hi"}, tmp / "meta.pt")
    return [MEAN_NET, str(tmp / "meta.pt")], ["meta.pt holds no input tensor", "epoch"]


def case_pt_of_garbage_bytes(tmp: Path) -> tuple[list[str], list[str]]:
    (tmp / "junk.pt").write_bytes(b"not a torch file")
    return [MEAN_NET, str(tmp / "junk.pt")], ["cannot read", "junk.pt", "not a file torch.load can read"]


def case_pt_with_pickled_objects(tmp: Path) -> tuple[list[str], list[str]]:
    torch.save({"x": torch.zeros(1, 3, 4, 4), "args": argparse.Namespace(lr=0.1)}, tmp / "objs.pt")
    return [MEAN_NET, str(tmp / "objs.pt")], ["objs.pt holds pickled Python objects", "weights_only"]


def case_npy_of_the_wrong_rank(tmp: Path) -> tuple[list[str], list[str]]:
    np.save(tmp / "flat.npy", np.zeros(5, dtype=np.float32))
    return [MEAN_NET, str(tmp / "flat.npy")], ["flat.npy has shape [5]", "(3, H, W) samples or (N, 3, H, W) batches"]


def case_shape_the_model_rejects(tmp: Path) -> tuple[list[str], list[str]]:
    noisy_png(tmp / "big.png", size=40)
    return (["tests.fixtures.models:Fixed32Net", str(tmp / "big.png")],
            ["the model failed on input", "big.png", "[1, 3, 40, 40]", "mat1 and mat2 shapes cannot be multiplied"])


def case_factory_raises(tmp: Path) -> tuple[list[str], list[str]]:
    source = net_file(tmp)
    return [f"{source}:broken", "--model-arg", "width=7"], ["net.py:broken(width=7) raised ValueError",
                                                             "factory exploded at width 7"]


def case_factory_missing(tmp: Path) -> tuple[list[str], list[str]]:
    source = net_file(tmp)
    return [f"{source}:nothing_here"], ["net.py has no callable 'nothing_here'"]


def case_factory_file_missing(tmp: Path) -> tuple[list[str], list[str]]:
    return [f"{tmp / 'ghost.py'}:build"], ["model file not found", "ghost.py"]


def case_factory_file_with_syntax_error(tmp: Path) -> tuple[list[str], list[str]]:
    (tmp / "bad.py").write_text("def build(:\n    pass\n", encoding="utf-8")
    return [f"{tmp / 'bad.py'}:build"], ["importing", "bad.py failed", "SyntaxError"]


def case_module_path_does_not_import(tmp: Path) -> tuple[list[str], list[str]]:
    return ["no_such_pkg_xyz.nets:build"], ["cannot import module 'no_such_pkg_xyz.nets'", "No module named"]


def case_checkpoint_for_another_architecture(tmp: Path) -> tuple[list[str], list[str]]:
    source = net_file(tmp)
    torch.save({"state_dict": tiny_cnn().state_dict()}, tmp / "other.pth")
    return ([f"{source}:build", "--weights", str(tmp / "other.pth")],
            ["checkpoint", "other.pth does not fit build", "missing 8 key(s) e.g. bn1.bias, bn1.running_mean",
             "unexpected 6 key(s) e.g. 0.bias, 0.weight"])


def case_checkpoint_with_other_shapes(tmp: Path) -> tuple[list[str], list[str]]:
    source = net_file(tmp)
    spec = __import__("importlib.util").util.spec_from_file_location("bad_input_net", source)
    module = __import__("importlib.util").util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.save(module.build(classes=4).state_dict(), tmp / "four.pth")
    return ([f"{source}:build", "--model-arg", "classes=5", "--weights", str(tmp / "four.pth")],
            ["four.pth does not fit build", "shape conflicts e.g. fc.bias [4] vs [5], fc.weight [4, 6] vs [5, 6]"])


def case_checkpoint_needs_trust_pickle(tmp: Path) -> tuple[list[str], list[str]]:
    source = net_file(tmp)
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=0.1)}, tmp / "with_args.pth")
    return ([f"{source}:build", "--weights", str(tmp / "with_args.pth")],
            ["with_args.pth contains pickled Python objects (it pickles argparse.Namespace)", "--trust-pickle"])


def case_whole_model_needs_trust_pickle(tmp: Path) -> tuple[list[str], list[str]]:
    from tests.fixtures.models import Fixed32Net

    torch.save(Fixed32Net(), tmp / "whole.pt")
    return [str(tmp / "whole.pt")], ["whole.pt contains pickled Python objects", "Fixed32Net", "--trust-pickle"]


def case_missing_checkpoint(tmp: Path) -> tuple[list[str], list[str]]:
    source = net_file(tmp)
    return [f"{source}:build", "--weights", str(tmp / "gone.pth")], ["checkpoint not found", "gone.pth"]


def case_weights_file_is_not_a_model(tmp: Path) -> tuple[list[str], list[str]]:
    torch.save(tiny_cnn().state_dict(), tmp / "weights.pth")
    return [str(tmp / "weights.pth")], ["weights.pth holds weights, not a model", "--weights"]


def case_torchvision_unknown_weights(tmp: Path) -> tuple[list[str], list[str]]:
    return (["torchvision:squeezenet1_1", "--weights", "IMAGENET9K"],
            ["--weights 'IMAGENET9K' is neither a file nor one of DEFAULT, IMAGENET1K_V1"])


def case_torchvision_unknown_model(tmp: Path) -> tuple[list[str], list[str]]:
    return ["torchvision:resnet19"], ["torchvision has no model 'resnet19'", "resnet18"]


def case_labels_count_mismatch(tmp: Path) -> tuple[list[str], list[str]]:
    noisy_png(tmp / "a.png", 8)
    (tmp / "three.txt").write_text("a\nb\nc\n", encoding="utf-8")
    return ([MEAN_NET, str(tmp / "a.png"), "--labels", str(tmp / "three.txt")],
            ["three.txt has 3 labels but the model outputs 4 classes"])


def case_labels_json_map_with_gaps(tmp: Path) -> tuple[list[str], list[str]]:
    (tmp / "gaps.json").write_text('{"0": "a", "2": "c"}', encoding="utf-8")
    return [MEAN_NET, "--labels", str(tmp / "gaps.json")], ["gaps.json", "indices must run 0..1; missing [1]"]


def case_two_input_model_on_the_cli(tmp: Path) -> tuple[list[str], list[str]]:
    return (["tests.fixtures.models:TwoInputNet"],
            ["TwoInputNet.forward takes 2 inputs (image, mask)", "generate_report", "forward_args"])


def case_dict_input_model_on_the_cli(tmp: Path) -> tuple[list[str], list[str]]:
    return ["tests.fixtures.models:DictInputNet"], ["DictInputNet.forward takes a dict", "forward_args"]


def case_dataset_without_class_folders(tmp: Path) -> tuple[list[str], list[str]]:
    (tmp / "flat").mkdir()
    noisy_png(tmp / "flat" / "a.png", 8)
    return [MEAN_NET, "--dataset", str(tmp / "flat")], ["--dataset", "flat has no class subfolders"]


def case_dataset_folder_not_in_labels(tmp: Path) -> tuple[list[str], list[str]]:
    (tmp / "ds" / "zebra").mkdir(parents=True)
    noisy_png(tmp / "ds" / "zebra" / "z.png", 8)
    (tmp / "labels.txt").write_text("r\ng\nb\nnone\n", encoding="utf-8")
    return ([MEAN_NET, "--dataset", str(tmp / "ds"), "--labels", str(tmp / "labels.txt")],
            ["class folder 'zebra' is not one of the --labels names"])


def case_label_pattern_matches_nothing(tmp: Path) -> tuple[list[str], list[str]]:
    noisy_png(tmp / "cat.png", 8)
    return [MEAN_NET, str(tmp / "cat.png"), "--label-pattern", r"_(\d)\.png$"], ["matches none of the inputs", "cat.png"]


def case_label_pattern_outside_the_model_classes(tmp: Path) -> tuple[list[str], list[str]]:
    noisy_png(tmp / "cat_1.png", 8)
    noisy_png(tmp / "cat_8000.png", 8)
    return ([MEAN_NET, str(tmp / "cat_1.png"), str(tmp / "cat_8000.png"), "--label-pattern", r"_(\d+)\.png$"],
            ["label 8000 of input cat_8000.png", "--label-pattern", "not one of the 4 classes the model outputs"])


def case_label_pattern_outside_the_labels_file(tmp: Path) -> tuple[list[str], list[str]]:
    noisy_png(tmp / "dog_7.png", 8)
    (tmp / "four.txt").write_text("a\nb\nc\nd\n", encoding="utf-8")
    return ([MEAN_NET, str(tmp / "dog_7.png"), "--label-pattern", r"_(\d+)\.png$", "--labels", str(tmp / "four.txt")],
            ["label 7 of input dog_7.png", "not one of the 4 classes named by --labels", "four.txt"])


def case_dataset_with_more_class_folders_than_the_model_has(tmp: Path) -> tuple[list[str], list[str]]:
    for name in "abcde":  # ChannelMeanNet outputs 4 classes: folder e would be class 4
        (tmp / "ds" / name).mkdir(parents=True)
        noisy_png(tmp / "ds" / name / f"{name}.png", 8)
    return ([MEAN_NET, "--dataset", str(tmp / "ds")],
            ["label 4 of input e.png", "class folders of --dataset", "not one of the 4 classes the model outputs"])


def case_mean_without_std(tmp: Path) -> tuple[list[str], list[str]]:
    return [MEAN_NET, "--mean", "0.5,0.5,0.5"], ["--mean and --std go together"]


def case_mean_with_wrong_channel_count(tmp: Path) -> tuple[list[str], list[str]]:
    return [MEAN_NET, "--mean", "0.5,0.5", "--std", "0.2,0.2"], ["--mean has 2 values but the model's input has 3"]


CASES: dict[str, Callable[[Path], tuple[list[str], list[str]]]] = {
    name[len("case_"):]: function for name, function in sorted(globals().items()) if name.startswith("case_")
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    args, expected = CASES[case](work)
    before = sorted(tmp_path.rglob("*"))
    out, js = tmp_path / "out" / "report.html", tmp_path / "out" / "report.json"
    out.parent.mkdir()
    code = main([*args, "-o", str(out), "--json", str(js), "--device", "cpu"])
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("reportgen: error: "), err
    assert "Traceback" not in err
    for text in expected:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    assert sorted(tmp_path.rglob("*")) == sorted([*before, out.parent])  # no output, no temp file


def test_debug_shows_the_traceback_in_process(tmp_path):
    args, _ = case_pt_holding_a_string(tmp_path)
    with pytest.raises(ReportError, match="holds a str, not a tensor"):
        main([*args, "-o", str(tmp_path / "r.html"), "--debug"])
    assert not (tmp_path / "r.html").exists()


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "reportgen", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)


def test_in_a_real_process_exit_2_and_debug_traceback(tmp_path):
    args, expected = case_truncated_image(tmp_path)
    out = tmp_path / "r.html"
    done = _cli([*args, "-o", str(out)], tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and all(t in done.stderr for t in expected)
    assert "Traceback" not in done.stderr and not out.exists()
    done = _cli([*args, "-o", str(out), "--debug"], tmp_path)
    assert done.returncode == 1 and "Traceback (most recent call last)" in done.stderr
    assert "ReportError: cannot read image" in done.stderr and not out.exists()


class CountingNet(torch.nn.Module):
    """tiny_cnn's layers, counting the batches its forward sees."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_cnn(classes=5)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x)


def test_api_targets_outside_the_classes_stop_after_the_first_batch():
    import reportgen

    model = CountingNet()
    inputs = torch.rand(12, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    targets = [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 5]  # 5 classes: the last target is out of range
    with pytest.raises(ReportError) as info:
        reportgen.generate_report(model, inputs, targets=targets, batch_size=2, device="cpu", cam=False,
                                  embedding=False, top_k=0)
    message = str(info.value)
    assert "\n" not in message
    assert "label 5 of input input-11 (from targets=) is not one of the 5 classes the model outputs" in message
    assert model.calls <= 3, f"{model.calls} forward calls: the check waited beyond the first batch of 6"
    with pytest.raises(ReportError, match="label -1 of input input-00"):
        reportgen.generate_report(tiny_cnn(), inputs[:2], targets=[-1, 0], device="cpu")


def test_api_labels_give_the_class_count_before_any_forward():
    import reportgen

    model = CountingNet()
    with pytest.raises(ReportError, match=r"label 3 of input input-01 .* 3 classes named by labels="):
        reportgen.generate_report(model, torch.rand(2, 3, 8, 8), targets=[0, 3], labels=["a", "b", "c"],
                                  device="cpu")
    assert model.calls == 0

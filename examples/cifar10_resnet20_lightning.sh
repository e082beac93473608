#!/bin/sh
# The same CIFAR-10 ResNet-20 as examples/cifar10_resnet20.sh, saved the way PyTorch Lightning
# saves a LightningModule that holds the network as `self.model`: every key under `state_dict`
# starts with `model.`, next to optimizer_states, epoch and hyper_parameters. reportgen finds
# that prefix, strips it and says so in the report; the accuracy is the plain checkpoint's.
#
#   DATA=../shared/data sh examples/cifar10_resnet20_lightning.sh   # out/cifar10-resnet20-lightning.html
#
# DATA (default ../shared/data, relative to the checkout) must hold resnet20-12fca82f.th and
# cifar10_foolbox_samples/: third-party files, not in the repository.
# Expected: 20/20 correct, prefix 'model.'.
set -eu
case ${DATA:-} in
    ''|/*) ;;
    *) DATA="$PWD/$DATA" ;;
esac
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
if [ ! -f "$DATA/resnet20-12fca82f.th" ] || [ ! -d "$DATA/cifar10_foolbox_samples" ]; then
    echo "cifar10_resnet20_lightning.sh: error: $DATA must hold resnet20-12fca82f.th and cifar10_foolbox_samples/ (third-party data, not in the repository); set DATA=FOLDER" >&2
    exit 2
fi
OUT=${OUT:-out/cifar10-resnet20-lightning}  # out/ is git-ignored
mkdir -p "$(dirname "$OUT")"

# The Lightning-style .ckpt, written from the plain checkpoint (Lightning itself is not needed:
# the file is what Trainer.save_checkpoint writes, with plain values only, so weights_only reads it).
python3 -c '
import sys, torch
plain = torch.load(sys.argv[1], map_location="cpu", weights_only=True)["state_dict"]
state = {"model." + key.removeprefix("module."): value for key, value in plain.items()}
torch.save({"epoch": 199, "global_step": 78200, "pytorch-lightning_version": "2.4.0",
            "state_dict": state, "hyper_parameters": {"lr": 0.1, "depth": 20},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.0001, "momentum": 0.9, "params": []}]}],
            "lr_schedulers": [], "callbacks": {}, "loops": {}}, sys.argv[2])
' "$DATA/resnet20-12fca82f.th" "$OUT.ckpt"

# The plain example's command and accuracy check, on this file; then the prefix from the JSON.
WEIGHTS="$OUT.ckpt" OUT="$OUT" DATA="$DATA" sh examples/cifar10_resnet20.sh
python3 -c '
import json, sys
model = json.load(open(sys.argv[1]))["model"]
print("checkpoint entry %s, prefix %r stripped" % (model["checkpoint_key"], model["checkpoint_prefix"]))
' "$OUT.json"

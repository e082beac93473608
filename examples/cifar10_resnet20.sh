#!/bin/sh
# The real CIFAR-10 ResNet-20 checkpoint (../shared/data, saved from nn.DataParallel in PyTorch's
# legacy pickle format) on the 20 lossless CIFAR-10 test PNGs, in ONE reportgen command.
#
#   DATA=../shared/data sh examples/cifar10_resnet20.sh   # writes out/cifar10-resnet20.html and .json
#
# DATA (default ../shared/data, relative to the checkout) must hold resnet20-12fca82f.th and
# cifar10_foolbox_samples/: third-party files, not in the repository.
#
# - examples/resnet20_cifar.py:resnet20 builds the architecture (shortcut "option A");
# - --weights strips the `module.` prefix and loads the state_dict strictly (weights_only);
# - the model was trained on [0, 1] RGB normalised with the ImageNet mean/std, no resizing;
# - --label-pattern reads the true class from the file name (cifar10_NN_L.png: L is the class).
# Expected: 20/20 correct (the checkpoint's README reports the same).
set -eu
# A DATA given relative to where the script was started from stays so after the cd below.
case ${DATA:-} in
    ''|/*) ;;
    *) DATA="$PWD/$DATA" ;;
esac
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
if [ ! -f "$DATA/resnet20-12fca82f.th" ] || [ ! -d "$DATA/cifar10_foolbox_samples" ]; then
    echo "cifar10_resnet20.sh: error: $DATA must hold resnet20-12fca82f.th and cifar10_foolbox_samples/ (third-party data, not in the repository); set DATA=FOLDER" >&2
    exit 2
fi
OUT=${OUT:-out/cifar10-resnet20}  # out/ is git-ignored
# WEIGHTS: the same weights in another file (examples/cifar10_resnet20_lightning.sh passes its .ckpt).
WEIGHTS=${WEIGHTS:-$DATA/resnet20-12fca82f.th}
mkdir -p "$(dirname "$OUT")"

PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} python3 -m reportgen examples/resnet20_cifar.py:resnet20 \
    --weights "$WEIGHTS" "$DATA/cifar10_foolbox_samples" \
    --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 \
    --labels examples/cifar10_labels.txt --label-pattern '_([0-9])\.png$' \
    -o "$OUT.html" --json "$OUT.json" --quiet

# Accuracy, straight from the report's JSON.
python3 examples/accuracy.py "$OUT.json"

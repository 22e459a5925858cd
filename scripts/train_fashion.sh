#!/usr/bin/env bash
# The recipe of the shipped grey `fashion` model (weights/README.md): data, training, export, the
# ood defaults, the card's figures and the README figure. One thread, so a 2-core machine stays usable;
# the run folder lives outside the repository and resumes with `vdvae train --resume RUN --time-limit MIN`.
#
#   scripts/train_fashion.sh [RUN_DIR] [DATA_DIR]
set -euo pipefail
RUN=${1:-/work/runs/fg1}
DATA=${2:-/work/data/fashion-mnist-grey}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

python scripts/prepare_fashion_mnist.py -o "$DATA"            # (N, 32, 32, 1) grey, Fashion-MNIST (MIT, (c) Zalando SE)
python scripts/prepare_mnist.py -o "$(dirname "$DATA")/mnist32.npz"   # MNIST digits, only for the OOD figure

# Training: 18 latent layers (six global 1x1, three 4x4, four 8x8, three 16x16, two 32x32; zdim 16), one
# grey channel, prior log-std bounded below 1 (scripts/fashion.json). Against an empty latent space: only
# the 1x1 layers are inferred for the first 1,200 steps, the posterior's KL weight rises from 0 to 1
# over 4,000 steps, and each layer's KL counts as at least 2 bits in the posterior's objective.
# (The shipped run read an RGB-stored copy of the same images, R = G = B: the model reads the luma,
# which is the grey value exactly.)
nice -n 10 vdvae train "$DATA/train.npz" --hparams scripts/fashion.json -o "$RUN" \
    --steps 11000 --batch-size 32 --lr 1e-3 --lr-schedule cosine --warmup 100 --ema-rate 0.995 \
    --grad-clip 400 --skip-threshold 5000 --holdout 2000 --max-eval 500 --eval-every 250 --keep-every 1000 \
    --seed 0 --dtype auto --coarse-first 1:1200 --kl-warmup 4000 --free-bits 2 --time-limit 100 --json
# What the shipped run did next: the rate was collapsing (255 bits per image at step 1,750), so the
# run was stopped by hand after its step-1,750 checkpoint and resumed with a free-bits floor per
# latent resolution (posterior side only), a shorter cosine (8,000 steps) and a 68-minute limit:
nice -n 10 vdvae train --resume "$RUN" --steps 8000 \
    --free-bits-res 32=400 --free-bits-res 16=100 --free-bits-res 8=30 --time-limit 68 --json
# The first shipped weights were the EMA exported at step 2,750 (copied from "$RUN/model.safetensors"
# then). That run folder was later lost, so the training went on from those weights in a new run,
# FG2, with the same floors, a longer cosine from a lower peak and a slower EMA; it was stopped after
# its step-10,000 checkpoint (99.9 minutes by the trainer's count), resumed in three more sittings
# to its step-20,000 checkpoint (236.8 minutes; what ships now), and continues (as often as needed) with
#   nice -n 10 vdvae train --resume "$FG2" --time-limit 120 --json
FG2=${FG2:-/work/runs/fg2}
nice -n 10 vdvae train "$DATA/train.npz" --init "$RUN/model.safetensors" -o "$FG2" \
    --steps 40000 --batch-size 32 --lr 5e-4 --lr-schedule cosine --warmup 100 --ema-rate 0.998 \
    --grad-clip 400 --skip-threshold 5000 --holdout 2000 --max-eval 500 --eval-every 500 --keep-every 2000 \
    --seed 1 --dtype auto --free-bits-res 32=400 --free-bits-res 16=100 --free-bits-res 8=30 --time-limit 160 --json
# Then the free-bits floors came off: a fine-tune of the step-20,000 EMA (the weights shipped before)
# with the plain ELBO, a cosine from 2.5e-4 over 6,500 steps (64 minutes; held out 2.514 -> 2.370 bits/dim,
# the rate falling mostly at 16x16 and 32x32). Tried beside it and stopped: the same fine-tune with
# the floors (2.522 at step 2,000) and with the posterior's KL weighted 1.5 (2.466 at step 1,000);
# neither sampled better (weights/README.md).
FG3=${FG3:-/work/runs/ftB}
nice -n 10 vdvae train "$DATA/train.npz" --init "$FG2/model.safetensors" -o "$FG3" \
    --steps 6500 --batch-size 32 --lr 2.5e-4 --lr-schedule cosine --warmup 200 --ema-rate 0.998 \
    --grad-clip 400 --skip-threshold 5000 --holdout 2000 --max-eval 500 --eval-every 500 --keep-every 1000 \
    --seed 2 --dtype auto --time-limit 95 --json
RUN=$FG3  # what is exported below

# The temperatures, chosen on held-out training images (-> 1.0,r16=0.7,r32=0.5: TEMP below)
python scripts/choose_temperature.py "$RUN/model.safetensors" --data "$DATA" \
    --specs "1.0;1.0,r32=0.7;1.0,r16=0.8,r32=0.6;1.0,r16=0.7,r32=0.3;1.1,r16=0.8,r32=0.6;1.0,r16=0.7,r32=0.5"
# The ood default: every k and the input-complexity score, judged on held-out training images against
# four sets made from them: turned upside down, inverted, their outlines (edges) and blurred. The last
# two are *simpler* than the garments, the case where a likelihood fails (Serra et al. 2020); with
# only the first two the choice was k = 12, which the test pair (MNIST) later showed to be poor.
python scripts/choose_ood_k.py "$RUN/model.safetensors" --data "$DATA" -n 300 --ks 6,9,12,14,15,16,17 --temps 0.0,1.0 \
    --sets vflip,inverted,edges,blurred -o "$RUN/ood-choice.json"
OOD_ARGS=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['choice']['export_args'])" "$RUN/ood-choice.json")
# --wall-time-min: 303.9 minutes of the runs before the fine-tune (fg1 + fg2, the trainer's count) plus its own
# shellcheck disable=SC2086  # OOD_ARGS is a list of options
python scripts/export_shipped.py fashion "$RUN/model.safetensors" weights/fashion.safetensors \
    --wall-time-min "$(python -c "import json,sys; print(round(303.9 + max(json.loads(l).get('elapsed_s', 0) for l in open(sys.argv[1])) / 60, 1))" "$RUN/log.jsonl")" \
    --default-temp "${TEMP:-1.0,r16=0.7,r32=0.5}" --default-output-temp 0 $OOD_ARGS \
    --ood-source "chosen on 300 held-out training images vs their flipped, inverted, outlined and blurred copies" --force
# The exemplar prior beside it (weights/fashion.prior.safetensors, which sample then uses by itself): 4,000 of the 58,000 images the model trained on (--holdout 2000 leaves
# out the trainer's held-out split), whose posterior draws give the six 1x1 and three 4x4 layers
# (--layers 9). Layers and count chosen on the held-out training images (weights/README.md).
vdvae prior fit weights/fashion.safetensors "$DATA/train.npz" --kind exemplar --layers 9 --exemplars 4000 \
    --holdout 2000 --seed 0 --force
python scripts/evaluate_fashion.py weights/fashion.safetensors --data "$DATA" --mnist "$(dirname "$DATA")/mnist32.npz" \
    --grid weights/fashion-samples.png -o weights/fashion-eval.json
python scripts/make_hierarchy_figure.py weights/fashion.safetensors --data "$DATA" -o docs/hierarchy-fashion.png

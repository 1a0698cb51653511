#!/bin/bash
# The runs of docs/results/language.md, "Subword study (issue 18 part 7)", in the order they ran.
# One training at a time, pinned to one core with one thread; run folders outside the repository.
# Then: python docs/results/language_study.py --collect RUNS/pA_*   (writes data/language-study.json)
#       python docs/results/language_study.py                       (prints the tables)
set -e
KJV=${KJV:-kjv.txt}              # the bible-kjv text (docs/results/language.md, "Corpus and setup")
RUNS=${RUNS:-runs}
train() { name=$1; shift; taskset -c 1 cram train "$@" --set train.threads=1 --out "$RUNS/$name" --overwrite; }
# scale A: BPE 2048, context 512 tokens, the lm model (d 64, 4 heads, SA), 600 steps of 8 windows
A=(--preset lm --data "$KJV" --set 'text.tokenizer="bpe:2048"' --set text.seq_len=512 --set train.batch_size=8
   --set text.eval_batches=8 --set train.eval_every=100)
# the scale claim: dense hybrid and SSM-only, two seeds
for s in 0 1; do
  train pA_dense_s$s "${A[@]}" --set router.name=dense --set train.seed=$s
  train pA_none_s$s "${A[@]}" --set router.name=none --set train.seed=$s
done
# CRAM, error target; tau = 5.6 nats = the 70th percentile of the memory's loss l_m in pA_dense_s0
# (python docs/results/data/language_study_paths.py RUNS/pA_dense_s0), so z = 1 at ~30 % of positions
train pA_cram_s0 "${A[@]}" --set router.name=cram --set router.tau=5.6 --set train.seed=0
train pA_cram_s1 "${A[@]}" --set router.name=cram --set router.tau=5.6 --set train.seed=1
# static routers at the budget pA_cram_s0 reached (its final rho_all 0.0851)
train pA_random_s0 "${A[@]}" --set router.name=random --set router.budget=0.0851 --set train.seed=0
train pA_stride_s0 "${A[@]}" --set router.name=stride --set router.budget=0.0851 --set train.seed=0
# CRAM with the gain target (branch h-gain, merged): z = 1[l_m - l_a > delta], a probed where skipped
train pA_cram-gain_s0 "${A[@]}" --set router.name=cram --set router.target=gain --set router.delta=0.05 --set train.seed=0
train pA_random_s1 "${A[@]}" --set router.name=random --set router.budget=0.0851 --set train.seed=1
train pA_learned-static_s0 "${A[@]}" --set router.name=learned-static --set router.budget=0.0851 --set train.seed=0
train pA_stride_s1 "${A[@]}" --set router.name=stride --set router.budget=0.0851 --set train.seed=1
# (sliding-window attention was not run at pA; at pB below)
# scale pB (run last, by the coordinator, one training per core): twice the schedule, dense and SSM-only
for s in 0 1; do
  for r in dense none; do
    train pB_${r}_s$s --preset lm-bpe --data "$KJV" --set train.steps=1200 --set router.name=$r --set train.seed=$s
  done
done
# pB routers: CRAM (error, tau 5.6) two seeds, then random and stride at pB_cram_s0's final rho_all
for s in 0 1; do train pB_cram_s$s --preset lm-bpe --data "$KJV" --set train.steps=1200 --set train.seed=$s; done
for r in random stride; do
  train pB_${r}_s0 --preset lm-bpe --data "$KJV" --set train.steps=1200 --set router.name=$r --set router.budget=0.0369 --set train.seed=0
done
for r in pB_dense_s0 pB_cram_s0 pB_random_s0 pB_stride_s0; do cram eval "$RUNS/$r" --json > "$RUNS/$r/eval.json"; done
# after training: the counterfactual gain of attention on the whole validation split, per routed run
for r in pA_dense_s0 pA_cram_s0 pA_cram-gain_s0 pA_random_s0 pA_stride_s0 pA_learned-static_s0; do
  cram eval "$RUNS/$r" --json > "$RUNS/$r/eval.json"
done
cram fit-gamma "$RUNS/pA_cram_s0" "$RUNS/pA_cram_s1"      # docs/results/data/language-study-fit-gamma.txt
# gain on the whole model (after the change of router.target = gain), seed 0 at pA
train pA_cram-mgain_s0 "${A[@]}" --set router.name=cram --set router.tau=5.6 --set router.target=gain --set router.delta=0.05 --set train.seed=0
cram eval "$RUNS/pA_cram-mgain_s0" --json > "$RUNS/pA_cram-mgain_s0/eval.json"
# pB, the rest of the grid (2026-12-07 from 16:21 UTC, two trainings at once, one per core; the
# static routers at 0.0369 = pB_cram_s0's final rho_all, as for seed 0):
B=(--preset lm-bpe --data "$KJV" --set train.steps=1200)
train pB_random_s1 "${B[@]}" --set router.name=random --set router.budget=0.0369 --set train.seed=1
train pB_stride_s1 "${B[@]}" --set router.name=stride --set router.budget=0.0369 --set train.seed=1
for s in 0 1; do
  train pB_learned-static_s$s "${B[@]}" --set router.name=learned-static --set router.budget=0.0369 --set train.seed=$s
  # the gain target on the whole model (the CRAM block is last, so the label is exact)
  train pB_cram-mgain_s$s "${B[@]}" --set router.name=cram --set router.target=gain --set router.delta=0.05 --set train.seed=$s
  # sliding-window attention in place of the CRAM layer; window 10 keys = the routed runs' mean keys
  # per position at rho 0.0369 (0.0369 x 512 / 2 = 9.4), so the attention FLOPs match
  train pB_window_s$s "${B[@]}" --set model.pattern=SW --set model.window=10 --set router.name=dense --set train.seed=$s
done
# the static routers again at the gain runs' attention use (mean final rho_all of pB_cram-mgain_s0/s1,
# 0.1583 and 0.1270 -> 0.1426), so the gain target is compared at matched attention use too
for s in 0 1; do
  for r in random stride; do
    train pB_${r}-mg_s$s "${B[@]}" --set router.name=$r --set router.budget=0.1426 --set train.seed=$s
  done
done
# a third seed (2026-12-07 from 17:30 UTC, two trainings at once) for the routers of the key comparisons
for r in "cram-mgain|--set router.target=gain --set router.delta=0.05" "cram|" "random|--set router.name=random --set router.budget=0.0369" \
         "none|--set router.name=none" "random-mg|--set router.name=random --set router.budget=0.1426" \
         "stride-mg|--set router.name=stride --set router.budget=0.1426" "stride|--set router.name=stride --set router.budget=0.0369" \
         "dense|--set router.name=dense" "learned-static|--set router.name=learned-static --set router.budget=0.0369" \
         "window|--set model.pattern=SW --set model.window=10 --set router.name=dense"; do
  # shellcheck disable=SC2086
  train pB_${r%%|*}_s2 "${B[@]}" ${r#*|} --set train.seed=2
done
# every pB run: the validation split and the held-out corpus (the World English Bible, plain text
# made by docs/results/data/osis_text.py from `mod2imp engWEB2015eb`; its first 256 windows)
WEB=${WEB:-web.txt}
for r in "$RUNS"/pB_*; do
  [ -e "$r/eval.json" ] || cram eval "$r" --json > "$r/eval.json"
  cram eval "$r" --data "$WEB" --sequences 256 --json > "$r/eval-web.json"
done
# the consolidation curve of the pB CRAM runs, pooled over seeds
cram fit-gamma "$RUNS"/pB_cram_s[012] --plot docs/results/language_pB_utilization.png  # data/language-study-fit-gamma-pB.txt
cram fit-gamma "$RUNS"/pB_cram-mgain_s[012]                        # data/language-study-fit-gamma-pB-gain.txt
# redundancy of the attention output along training (every checkpoint, 200 steps apart), on the held-out
# corpus in windows of the training context
for r in pB_dense_s0 pB_cram_s0 pB_dense_s1 pB_cram_s1; do
  cram redundancy "$RUNS/$r" --text "$WEB" --window 512 --max-tokens 40000 --json > "$RUNS/$r/redundancy.json"
done

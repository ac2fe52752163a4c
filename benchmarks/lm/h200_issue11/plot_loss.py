"""Plots the two seeds' training loss of the final tree (metrics.json of train_lm.py) and
the validation losses at steps 150 and 300 of the runs before the issue-11 changes."""
import json
import pathlib

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

here = pathlib.Path(__file__).parent
BEFORE_VAL = {0: [2.5374, 2.4492], 1: [2.5469, 2.4491]}  # loss_call3_before_after.txt
fig, ax = plt.subplots(figsize=(7, 4))
for seed, color in ((0, "C0"), (1, "C1")):
  h = json.loads((here / f"loss_final_s{seed}_metrics.json").read_text())["history"]
  ax.plot(h["step"], h["loss"], color=color, alpha=0.5, lw=0.8, label=f"train, seed {seed}")
  ax.plot(h["val_step"], h["val_loss"], "o-", color=color, label=f"validation, seed {seed}")
  ax.plot([150, 300], BEFORE_VAL[seed], "x--", color=color,
          label=f"validation before issue 11, seed {seed}")
ax.set(xlabel="step", ylabel="loss (nats/byte)", ylim=(2.0, 3.6),
       title="gpt2-small byte LM, T=2048, cuDNN attention, one H200")
ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(here / "loss_curves.png", dpi=110)

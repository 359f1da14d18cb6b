# %% [markdown]
# # chimuf from Python
#
# The whole study, its numbers as typed outcomes and as pandas tables, and its final model on
# new images, cell by cell. Run it as a script (`python examples/notebook.py`) or open it as a
# notebook (Jupyter with jupytext, VS Code, PyCharm read the `# %%` cells). The data folder is
# chimuf's usual one: data.dir, else $CHIMUF_DATA, else ./data (one sub-folder per class).
# The smoke profile keeps it to a minute or two on a laptop CPU; `profile="paper"` is the paper.

# %% 1. Run the study. A rerun with the same settings reuses every finished stage.
from pathlib import Path

import chimuf

run = chimuf.run_study(profile="smoke", out="runs/notebook", seed=42, kfold={"folds": 2})
print(f"run {run.dir}: {run.status}")

# %% 2. The headline numbers, as results.json holds them (chimuf.core.results).
e = run.results.evaluate
print(f"test accuracy {e.accuracy:.3f} [{e.accuracy_interval.low:.3f}, {e.accuracy_interval.high:.3f}], "
      f"ROC AUC {e.roc_auc:.3f} on {e.n_images} test images")
print(f"{len(run.results.kfold.folds)}-fold accuracy {run.results.kfold.mean_accuracy:.3f}")

# %% 3. The tables, as pandas DataFrames.
print(run.trainings()[["name", "augmented", "epochs_run", "best_val_accuracy"]].to_string(index=False))
print(run.per_class().to_string(index=False))
print(run.trials()[["trial_id", "status", "score"]].to_string(index=False))
predictions = run.predictions()
print(f"{(~predictions['right']).sum()} of {len(predictions)} test images misclassified")

# %% 4. The final model on image files (here: three of the study's own photos).
photos = sorted(p for p in Path(run.results.run.data_dir).glob("*/*") if p.is_file())[:3]
for prediction in run.predict(photos):
    print(f"{Path(prediction.path).name}: {prediction.label} ({prediction.probability:.2f})")

# %% 5. Read the run back later, and set it beside another one (here: itself).
again = chimuf.load_run(run.dir)
print("identical to itself:", chimuf.compare(run.dir, again.dir).identical)

"""precision = "auto" by device (device facts faked), and mixed float16 training with loss scaling."""

from __future__ import annotations

import io

import numpy as np
import pytest

from chimuf.core.config import TrainConfig
from chimuf.core.console import Console
from chimuf.ml.architectures import models
from chimuf.ml.architectures.models import choose_precision, precision_choice
from chimuf.ml.machine import Gpu

H100 = Gpu("NVIDIA H100 80GB HBM3", (9, 0))
A100 = Gpu("NVIDIA A100-SXM4-40GB", (8, 0))
T4 = Gpu("Tesla T4", (7, 5))
V100 = Gpu("Tesla V100-SXM2-16GB", (7, 0))
P100 = Gpu("Tesla P100-PCIE-16GB", (6, 0))
AMX_CPU = {"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}
PLAIN_CPU = {"avx2", "fma"}


def test_h100_like_gpu_trains_in_bfloat16():
    choice = choose_precision([H100], PLAIN_CPU)
    assert choice.precision == "mixed_bfloat16"
    assert "H100" in choice.reason and "9.0" in choice.reason


def test_t4_like_gpu_trains_in_float16_with_loss_scaling():
    for gpu in (T4, V100):
        choice = choose_precision([gpu], AMX_CPU)  # the GPU decides, not the host's CPU
        assert choice.precision == "mixed_float16"
        assert "loss scaling" in choice.reason and gpu.name in choice.reason


def test_cpu_with_amx_trains_in_bfloat16():
    choice = choose_precision([], AMX_CPU)
    assert choice.precision == "mixed_bfloat16" and "amx_bf16" in choice.reason
    assert choose_precision([], {"avx512f", "avx512_bf16"}).precision == "mixed_bfloat16"


def test_cpu_without_bf16_trains_in_float32():
    choice = choose_precision([], PLAIN_CPU)
    assert choice.precision == "float32" and "AMX" in choice.reason


def test_the_weakest_of_several_gpus_decides():
    assert choose_precision([H100, T4], PLAIN_CPU).precision == "mixed_float16"
    assert choose_precision([A100, H100], PLAIN_CPU).precision == "mixed_bfloat16"


def test_gpus_without_tensor_cores_or_capability_train_in_float32():
    assert choose_precision([P100], AMX_CPU).precision == "float32"
    unknown = choose_precision([Gpu("AMD Instinct MI300X", None)], AMX_CPU)
    assert unknown.precision == "float32" and "compute capability" in unknown.reason


def test_auto_asks_this_machines_gpus_and_cpu(monkeypatch):
    monkeypatch.setattr("chimuf.ml.machine.gpus", lambda: [T4])
    assert precision_choice("auto").precision == "mixed_float16"
    monkeypatch.setattr("chimuf.ml.machine.gpus", lambda: [])
    monkeypatch.setattr("chimuf.core.environment.read_cpuinfo", lambda: "flags\t: avx2 amx_bf16\n")
    assert precision_choice("auto").precision == "mixed_bfloat16"
    assert precision_choice("float32").reason == "set in the config (train.precision)"


def test_mixed_float16_model_compiles_with_a_loss_scale_optimizer():
    import keras

    model = models.build_model("model1", 16, precision="mixed_float16")
    models.compile_model(model, 1e-3)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert models.model_precision(model) == "mixed_float16"
    plain = models.build_model("model1", 16, precision="mixed_bfloat16")
    models.compile_model(plain, 1e-3)
    assert not isinstance(plain.optimizer, keras.optimizers.LossScaleOptimizer)


def test_mixed_float16_training_runs_resumes_and_learns(tmp_path):
    """The fit loop with a LossScaleOptimizer: finite losses, checkpoints that load, a resume."""
    import keras

    from chimuf.ml.training.fit import fit

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    y = (np.arange(40) % 2).astype(np.int32)
    x[y == 1, :6, :6] = 255
    cfg = TrainConfig(epochs=2, batch_size=8, learning_rate=1e-2, patience=10, start_from_epoch=0,
                      precision="mixed_float16")

    def model():
        keras.utils.set_random_seed(1)
        m = models.build_model("model1", 16, precision="mixed_float16")
        models.compile_model(m, cfg.learning_rate)
        return m

    console = Console(io.StringIO(), live=False)
    first = fit(model(), (x[:32], y[:32]), (x[32:], y[32:]), cfg, None, 0, tmp_path, console, "fp16",
                max_epochs=1)
    assert first.precision == "mixed_float16" and np.isfinite(first.history[0].loss)
    resumed = model()
    second = fit(resumed, (x[:32], y[:32]), (x[32:], y[32:]), cfg, None, 0, tmp_path, console, "fp16")
    assert second.epochs_run == 2 and len(second.history) == 2
    assert all(np.isfinite(r.loss) and np.isfinite(r.val_loss) for r in second.history)
    assert float(resumed.optimizer.iterations.numpy()) > 0


def test_precision_outside_the_list_is_refused_in_one_line():
    from chimuf.core.errors import ConfigError

    with pytest.raises(ConfigError, match="mixed_float16"):
        precision_choice("float8")

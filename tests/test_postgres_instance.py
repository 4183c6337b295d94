"""The PostgreSQL instance (dagster_home/postgres/dagster.yaml) on a real PostgreSQL server of the test's own."""

import contextlib
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import yaml
from dagster._core.scheduler.instigation import InstigatorStatus

from lavie_model.curation.demo_corpus import wheel_file
from pipelines.cli import main as lavie
from pipelines.definitions import defs

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "dagster_home" / "postgres" / "dagster.yaml"
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png")  # real photos shipped in scikit-image's wheel


def test_the_postgres_instance_reads_its_connection_from_the_environment_only():
    """Every connection setting is an `env:` entry, and the rest equals the SQLite default's settings."""
    config = yaml.safe_load(CONFIG.read_text())
    default = yaml.safe_load((ROOT / "dagster_home" / "dagster.yaml").read_text())
    connection = config["storage"]["postgres"]["postgres_db"]
    assert connection.pop("scheme") == "postgresql+psycopg2"
    assert connection == {key: {"env": f"DAGSTER_PG_{name}"} for key, name in
                          [("hostname", "HOST"), ("port", "PORT"), ("username", "USER"), ("password", "PASSWORD"),
                           ("db_name", "DB")]}
    assert {k: v for k, v in config.items() if k != "storage"} == {k: v for k, v in default.items() if k != "storage"}


def test_runs_event_logs_and_sensor_state_live_in_postgres(postgres, postgres_home, tmp_path, capsys):
    """`lavie ingest --images`, the project's curate_images job and `dagster sensor start` under the PostgreSQL
    instance; a second instance on the same configuration, and the database's own tables, show what they did."""
    import psycopg2

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in PHOTOS:
        shutil.copy(wheel_file("skimage", "data", name), photos)
        (photos / name).with_suffix(".txt").write_text(f"a photo: {name[:-4]}")
    assert lavie(["ingest", "--images", str(photos)]) == 0
    batch = capsys.readouterr().out.strip()

    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        result = defs.get_job_def("curate_images").execute_in_process(instance=instance, partition_key=batch)
        assert result.success
    started = subprocess.run([str(Path(sys.executable).parent / "dagster"), "sensor", "stop", "inbox_sensor",
                              "-w", "workspace.yaml"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stderr[-3000:]

    with dg.DagsterInstance.from_config(str(postgres_home)) as other:  # a second reader
        run = other.get_run_by_id(result.run_id)
        assert run.status == dg.DagsterRunStatus.SUCCESS and run.job_name == "curate_images"
        assert run.tags["dagster/partition"] == batch
        assert other.get_dynamic_partitions("image_batches") == [batch]
        events = [record.event_log_entry.dagster_event.event_type for record in
                  other.get_records_for_run(result.run_id).records if record.event_log_entry.is_dagster_event]
        assert events.count(dg.DagsterEventType.ASSET_MATERIALIZATION) == 2
        assert events[-1] == dg.DagsterEventType.RUN_SUCCESS
        shards = other.get_latest_materialization_event(dg.AssetKey("image_shards"))
        assert shards.run_id == result.run_id
        assert shards.asset_materialization.partition == batch
        assert shards.asset_materialization.metadata["dagster/row_count"].value == len(PHOTOS)
        sensors = {state.instigator_name: state.status for state in other.all_instigator_state()}
        assert sensors["inbox_sensor"] == InstigatorStatus.STOPPED  # running by default: stopped by hand

    with contextlib.closing(psycopg2.connect(host=postgres["DAGSTER_PG_HOST"], port=postgres["DAGSTER_PG_PORT"],
                                             user=postgres["DAGSTER_PG_USER"], dbname=postgres["DAGSTER_PG_DB"])) as db:
        cursor = db.cursor()
        cursor.execute("SELECT status FROM runs WHERE run_id = %s", (result.run_id,))
        assert cursor.fetchall() == [("SUCCESS",)]
        cursor.execute("SELECT count(*) FROM event_logs WHERE run_id = %s AND dagster_event_type = %s",
                       (result.run_id, "ASSET_MATERIALIZATION"))
        assert cursor.fetchone() == (2,)
        cursor.execute("SELECT status FROM instigators WHERE instigator_type = 'SENSOR' AND instigator_body LIKE %s",
                       ("%inbox_sensor%",))
        assert cursor.fetchall() == [("STOPPED",)]

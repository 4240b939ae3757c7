"""Metrics: /metrics scraped over loopback HTTP and parsed with prometheus_client's parser;
a job tick's node-exporter textfile."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import requests
from helpers import API_KEY, GOOD_CSV, WEBHOOK_SECRET, make_batch, make_job, webhook_serve
from prometheus_client.parser import text_string_to_metric_families

from omi_batch import callbacks, webhook
from omi_batch.config import Secret
from omi_batch.errors import OmiBatchError
from omi_batch.jobs import run_tick
from omi_batch.ledger import STATES, Ledger
from omi_batch.metrics import make_metrics, write_tick_metrics

METRICS_FILE = ('metrics_file = "work/textfile/omi_batch.prom"',)
TRANSFER = {"source_email": "an.nguyen@example.vn", "target_email": "binh.tran@example.vn",
            "requested_target": "binh.tran@example.vn", "via": (), "conv_ids": (),
            "replace_existing_members": False, "note": ""}  # fmt: skip


def new_batch(ledger: Ledger, rows: int = 3, job: str | None = None) -> str:
    return ledger.create_batch(
        source_file="departures.csv", source_sha256="cd" * 32, created_by="hr-admin",
        base_url=None, options={"job": job} if job else {}, input_rows=rows, warnings=[],
        rows=[dict(TRANSFER, row=n + 2, source_email=f"s{n}@example.vn") for n in range(rows)],
    )  # fmt: skip


def samples(text: str) -> dict[tuple, float]:
    """``{(sample name, sorted labels…): value}`` of a scrape."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, *sorted(sample.labels.items()))] = sample.value
    return found


@pytest.fixture
def serving(ledger):
    """The receiver app with /metrics in front, on a loopback port: ``(metrics, url)``."""
    metrics = make_metrics(ledger)
    app = metrics.wrap(webhook.make_app(ledger, Secret(WEBHOOK_SECRET)))
    with webhook.start(app) as running:
        yield metrics, running.url


def test_metrics_are_scraped_over_http_with_counts_by_verdict_and_reason(serving):
    metrics, url = serving
    for verdict, seconds in [("applied", 0.004), ("applied", 0.02), ("duplicate", 0.003),
                             ("refused:bad_credential", 0.001), ("refused:too_large", 0.001),
                             ("refused:bad_credential", 0.002), ("busy", 1.5)]:  # fmt: skip
        metrics.observe_callback(verdict, seconds)
    metrics.observe_ledger_write(0.003)
    metrics.observe_ledger_write(0.2)

    answer = requests.get(f"{url}/metrics", timeout=10)

    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/plain; version=")
    found = samples(answer.text)
    assert {k[1][1]: v for k, v in found.items()
            if k[0] == "omi_batch_callbacks_received_total"} == {
        "applied": 2, "duplicate": 1, "refused": 3, "busy": 1,
    }  # fmt: skip
    assert {k[1][1]: v for k, v in found.items()
            if k[0] == "omi_batch_callbacks_refused_total"} == {
        "bad_credential": 2, "too_large": 1,
    }  # fmt: skip
    assert found[("omi_batch_callback_answer_seconds_count",)] == 7
    assert found[("omi_batch_callback_answer_seconds_bucket", ("le", "0.005"))] == 5
    assert found[("omi_batch_callback_answer_seconds_bucket", ("le", "1.5"))] == 7
    assert found[("omi_batch_ledger_write_seconds_count",)] == 2
    assert found[("omi_batch_ledger_write_seconds_bucket", ("le", "0.005"))] == 1
    assert found[("omi_batch_ledger_up",)] == 1


def test_the_receiver_still_answers_its_own_paths_behind_the_metrics(serving):
    _, url = serving
    assert requests.get(f"{url}/healthz", timeout=10).json() == {"ok": True}
    refused = requests.post(f"{url}/callbacks/x/1/execute", data=b"{}", timeout=10)
    assert refused.status_code == 401
    assert requests.post(f"{url}/metrics", timeout=10).status_code == 405


def test_rows_by_state_are_listed_for_open_batches_only(serving, ledger):
    metrics, url = serving
    open_batch = new_batch(ledger, rows=3)
    ledger.record_step(open_batch, 2, state="previewed", event="previewed")
    done = new_batch(ledger, rows=1)
    ledger.record_step(done, 2, state="skipped", event="skipped")

    found = samples(requests.get(f"{url}/metrics", timeout=10).text)

    rows = {k: v for k, v in found.items() if k[0] == "omi_batch_rows"}
    assert rows == {
        ("omi_batch_rows", ("batch", open_batch), ("state", state)): (
            {"planned": 2, "previewed": 1}.get(state, 0)
        )
        for state in STATES
    }
    assert found[("omi_batch_open_batches",)] == 1


def test_a_ledger_that_cannot_be_read_still_gives_a_scrape_saying_so(tmp_path):
    class Broken:
        def batches(self):
            raise OSError("disk gone")

    metrics = make_metrics(Broken())
    with webhook.start(metrics.app) as running:
        answer = requests.get(f"{running.url}/metrics", timeout=10)
    assert answer.status_code == 200
    found = samples(answer.text)
    assert found[("omi_batch_ledger_up",)] == 0
    assert not [k for k in found if k[0] == "omi_batch_rows"]


def test_two_apps_in_one_process_keep_their_own_figures(ledger):
    first, second = make_metrics(ledger), make_metrics(ledger)
    first.observe_callback("applied", 0.01)
    assert samples(first.text().decode())[
        ("omi_batch_callbacks_received_total", ("verdict", "applied"))] == 1  # fmt: skip
    assert not [k for k in samples(second.text().decode())
                if k[0] == "omi_batch_callbacks_received_total"]  # fmt: skip


# --------------------------------------------------------------------------- the textfile


def tick(exit_code: int, **lists) -> SimpleNamespace:
    base = {"created": [], "waiting": [], "executed": [], "archived": [], "rejected": [],
            "problems": []}  # fmt: skip
    base.update(lists)
    return SimpleNamespace(exit_code=exit_code, **base)


def test_a_tick_writes_its_figures_to_a_node_exporter_textfile(tmp_path, ledger):
    mine = new_batch(ledger, rows=2, job="offboarding")
    new_batch(ledger, rows=1, job="another-job")
    metrics = make_metrics(ledger, job="offboarding")
    metrics.observe_callback("applied", 0.01)
    path = tmp_path / "textfile" / "omi_batch.prom"

    write_tick_metrics(path, job="offboarding", result=tick(0, created=[mine], waiting=[mine]),
                       started=1000.0, finished=1012.5, metrics=metrics,
                       notifications_pending=2)  # fmt: skip

    assert os.listdir(path.parent) == ["omi_batch.prom"]  # no temporary file left behind
    found = samples(path.read_text())
    job = ("job", "offboarding")
    assert found[("omi_batch_job_last_tick_timestamp_seconds", job)] == 1012.5
    assert found[("omi_batch_job_last_tick_duration_seconds", job)] == 12.5
    assert found[("omi_batch_job_last_tick_exit_code", job)] == 0
    assert found[("omi_batch_job_last_success_timestamp_seconds", job)] == 1012.5
    assert {k[2][1]: v for k, v in found.items() if k[0] == "omi_batch_job_last_tick_batches"} == {
        "created": 1, "waiting": 1, "executed": 0, "archived": 0,
    }  # fmt: skip
    assert found[("omi_batch_job_last_tick_files_rejected", job)] == 0
    assert found[("omi_batch_job_notifications_pending", job)] == 2
    assert found[("omi_batch_rows", ("batch", mine), ("state", "planned"))] == 2
    assert {k[1][1] for k in found if k[0] == "omi_batch_rows"} == {mine}
    assert found[("omi_batch_callbacks_received_total", ("verdict", "applied"))] == 1


def test_a_failed_tick_keeps_the_last_success_time_of_the_previous_file(tmp_path):
    path = tmp_path / "omi_batch.prom"
    write_tick_metrics(path, job="offboarding", result=tick(0), started=100.0, finished=110.0)
    write_tick_metrics(path, job="offboarding", result=tick(3, problems=["OMI unreachable"]),
                       started=400.0, finished=401.0)  # fmt: skip

    found = samples(path.read_text())
    job = ("job", "offboarding")
    assert found[("omi_batch_job_last_tick_exit_code", job)] == 3
    assert found[("omi_batch_job_last_tick_timestamp_seconds", job)] == 401.0
    assert found[("omi_batch_job_last_success_timestamp_seconds", job)] == 110.0
    assert found[("omi_batch_job_last_tick_problems", job)] == 1


def test_a_first_tick_that_failed_has_no_success_time(tmp_path):
    path = tmp_path / "omi_batch.prom"
    write_tick_metrics(path, job="offboarding", result=tick(1), started=1.0, finished=2.0)
    assert not [k for k in samples(path.read_text())
                if k[0] == "omi_batch_job_last_success_timestamp_seconds"]  # fmt: skip


# --------------------------------------------------------------------------- wired in


def test_the_receiver_counts_every_callback_it_answers_and_times_its_ledger_writes(ledger):
    metrics = make_metrics(ledger)
    app = metrics.wrap(webhook.make_app(ledger, Secret(WEBHOOK_SECRET), metrics=metrics))
    batch_id = new_batch(ledger, rows=2)
    token = callbacks.token(Secret(WEBHOOK_SECRET), batch_id, 2, "execute")
    sent = [
        ({callbacks.HEADER: token}, {"requestId": "req-1", "status": "SUCCESS"}),
        ({callbacks.HEADER: token}, {"requestId": "req-1", "status": "SUCCESS"}),
        ({callbacks.HEADER: "wrong"}, {"requestId": "req-2"}),
        ({}, {"requestId": "req-3"}),
        ({callbacks.HEADER: token}, ["not", "an", "object"]),
    ]
    with webhook.start(app) as running:
        verdicts = [
            requests.post(f"{running.url}/callbacks/{batch_id}/2/execute", json=body,
                          headers=headers, timeout=10).json()["verdict"]
            for headers, body in sent
        ]  # fmt: skip
        found = samples(requests.get(f"{running.url}/metrics", timeout=10).text)

    assert verdicts[2:] == ["refused:bad_credential", "refused:missing_credential",
                            "refused:bad_json"]  # fmt: skip
    expected: dict[str, int] = {}
    for verdict in verdicts:
        key = "refused" if verdict.startswith("refused:") else verdict
        expected[key] = expected.get(key, 0) + 1
    assert {k[1][1]: v for k, v in found.items()
            if k[0] == "omi_batch_callbacks_received_total"} == expected  # fmt: skip
    assert {k[1][1]: v for k, v in found.items()
            if k[0] == "omi_batch_callbacks_refused_total"} == {
        "bad_credential": 1, "missing_credential": 1, "bad_json": 1,
    }  # fmt: skip
    assert found[("omi_batch_callback_answer_seconds_count",)] == 5
    assert found[("omi_batch_ledger_write_seconds_count",)] >= 1
    assert found[("omi_batch_rows", ("batch", batch_id), ("state", "planned"))] == 2


def test_a_job_tick_writes_its_metrics_file(tmp_path, simulator):
    _, server = simulator
    job = make_job(tmp_path, top=METRICS_FILE, run=("timeout = 2",))
    assert job.metrics_file == tmp_path / "work" / "textfile" / "omi_batch.prom"
    (job.inbox).mkdir(parents=True)
    (job.inbox / "departures.csv").write_text(GOOD_CSV, encoding="utf-8")

    result = run_tick(job, env={"OMI_BASE_URL": server.url, "OMI_API_KEY": API_KEY})

    [batch_id] = result.created
    found = samples(job.metrics_file.read_text())
    labels = ("job", "offboarding")
    assert found[("omi_batch_job_last_tick_exit_code", labels)] == 0
    assert found[("omi_batch_job_last_tick_batches", labels, ("outcome", "waiting"))] == 1
    assert found[("omi_batch_rows", ("batch", batch_id), ("state", "previewed"))] == 5
    assert found[("omi_batch_open_batches",)] == 1
    # the tick's own receiver answered the preview callbacks (if OMI sent any): all counted
    answered = sum(v for k, v in found.items() if k[0] == "omi_batch_callbacks_received_total")
    assert answered == found[("omi_batch_callback_answer_seconds_count",)]


def test_a_tick_stopped_by_missing_configuration_still_writes_its_metrics_file(tmp_path):
    job = make_job(tmp_path, top=METRICS_FILE, run=("timeout = 2",))
    job.inbox.mkdir(parents=True)
    (job.inbox / "departures.csv").write_text(GOOD_CSV, encoding="utf-8")
    # OMI unreachable: the configuration check passes, the preview cannot connect
    env = {"OMI_BASE_URL": "http://127.0.0.1:9", "OMI_API_KEY": API_KEY}
    with pytest.raises(OmiBatchError) as raised:
        run_tick(job, env=env)
    found = samples(job.metrics_file.read_text())
    assert found[("omi_batch_job_last_tick_exit_code", ("job", "offboarding"))] == (
        raised.value.exit_code
    )


def test_webhook_serve_with_metrics_answers_a_scrape_beside_the_callbacks(ledger_path):
    import json

    with Ledger(ledger_path) as led:
        batch_id = make_batch(led, rows=2)
    with webhook_serve(ledger_path, "--metrics") as served:
        url = served.url
        token = callbacks.token(Secret(WEBHOOK_SECRET), batch_id, 2, "execute")
        body = {"requestId": "req-2", "status": "SUCCESS", "payload": {"updatedRecords": 3}}
        applied = requests.post(f"{url}/callbacks/{batch_id}/2/execute", data=json.dumps(body),
                                headers={callbacks.HEADER: token}, timeout=10)  # fmt: skip
        refused = requests.post(f"{url}/callbacks/{batch_id}/3/execute", data=b"{}", timeout=10)
        scrape = requests.get(f"{url}/metrics", timeout=10)
        assert served.stop() == 0
    assert (applied.json(), refused.status_code) == ({"verdict": "applied"}, 401)
    found = samples(scrape.text)
    assert found[("omi_batch_callbacks_received_total", ("verdict", "applied"))] == 1
    assert found[("omi_batch_callbacks_refused_total", ("reason", "missing_credential"))] == 1
    assert found[("omi_batch_rows", ("batch", batch_id), ("state", "succeeded"))] == 1
    assert found[("omi_batch_rows", ("batch", batch_id), ("state", "submitted"))] == 1
    assert f"Metrics at {url}/metrics" in served.stderr

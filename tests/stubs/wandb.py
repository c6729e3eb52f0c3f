"""Stands in for the W&B client where a test needs what only the online service gives, a run's URL (the
ledger's wandb_url; offline, the real client has none), and checks that the key reached the trainer: init
returns a run with a URL, and logging goes to a JSON-lines file the test can read ($WANDB_STUB_LOG). The
logging itself is tested with the real client, offline: tests/test_wandb.py."""
import json
import os


class _Run:
    url = "https://wandb.ai/nanolaunch-test/{project}/runs/stub"

    def __init__(self, project):
        self.url = self.url.format(project=project)

    def log(self, data):
        with open(os.environ["WANDB_STUB_LOG"], "a") as f:
            f.write(json.dumps(data) + "\n")

    def finish(self):
        pass


def init(project=None, name=None, config=None):
    assert os.environ.get("WANDB_API_KEY"), "the key reaches the trainer through the environment"
    return _Run(project)

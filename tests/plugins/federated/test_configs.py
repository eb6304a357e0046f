"""The configs a deployed server and its sites run with."""

import yaml
from federated_jobs import federated_config, sentiment_rows, write_jsonl

from tunewright import get_plugin_manager, prepare_run
from tunewright.plugins.federated import configs


def test_a_deployed_server_evaluates_every_example_of_its_data(tmp_path, tiny_bert_dir):
    """The server's ``data:`` is its central held-out set: none of it is split off or trains,
    whatever ``data.validation`` says as a fraction (the sites read that for their own data)."""
    central = write_jsonl(tmp_path / "central.jsonl", sentiment_rows(30, seed=9))
    path = federated_config(
        tmp_path,
        tiny_bert_dir,
        central,
        tmp_path / "run",
        server={"host": "127.0.0.1", "port": 9092, "insecure": True},
    )
    pm = get_plugin_manager()
    config = configs.federated_config(str(path), pm, server=True)
    assert config.data.validation == str(central) and config.data.test is None
    said = []
    run = prepare_run(config, pm, run_dir=tmp_path / "run", echo=said.append)
    assert len(run.validation_features) == 30
    # held out whole, not compared with itself as training data (30 "leak" warnings on the console)
    assert not [line for line in said if "the same example as" in line]
    # simulation keeps holding out the fraction as its central set, the rest is the sites' data
    assert configs.federated_config(str(path), pm).data.validation == 0.2
    # a file of its own named as data.validation stays the central set
    held = write_jsonl(tmp_path / "held.jsonl", sentiment_rows(12, seed=4))
    raw = yaml.safe_load(path.read_text())
    raw["data"]["validation"] = str(held)
    path.write_text(yaml.safe_dump(raw))
    assert configs.federated_config(str(path), pm, server=True).data.validation == str(held)

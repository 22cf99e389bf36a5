"""DeepPhysX's spellings: accepted where the meaning is the same, otherwise refused with the dpx name."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import dpx
from dpx.core.config import ConfigError, EnvironmentConfig, NetworkConfig, from_mapping
from dpx.core.renames import DEEPPHYSX_NAMES, RENAMED, REPLACED
from dpx.testing import prepare_environment

README = Path(__file__).resolve().parents[1] / "README.md"


def test_network_config_takes_deepphysx_class_parameters():
    config = NetworkConfig(optimization_class="my.optim:Optimization", data_transformation_class="identity")
    assert (config.optimization, config.data_transformation) == ("my.optim:Optimization", "identity")
    with pytest.raises(ConfigError, match="optimization_class is DeepPhysX's name for optimization; give only one"):
        NetworkConfig(optimization_class="a:B", optimization="c:D")


def test_environment_config_takes_number_of_thread_and_explains_as_tcp_ip_client():
    assert EnvironmentConfig("toy.spring", number_of_thread=3).workers == 3
    with pytest.raises(ConfigError, match=r"as_tcp_ip_client=True is DeepPhysX's; in dpx, runner='multiprocess'"):
        EnvironmentConfig("toy.spring", as_tcp_ip_client=True)


def test_toml_sections_take_deepphysx_names_or_point_to_the_dpx_name():
    network = from_mapping(NetworkConfig, {"optimization_class": "a.b:C"}, "job.toml [network]")
    assert network.optimization == "a.b:C"
    with pytest.raises(ConfigError, match=r"^job.toml \[environment\]: unknown parameter 'as_tcp_ip_client': "
                                          r"DeepPhysX's; in dpx, runner='multiprocess'"):
        from_mapping(EnvironmentConfig, {"environment_class": "toy.spring", "as_tcp_ip_client": True},
                     "job.toml [environment]")


class DeepPhysXStyle(dpx.Environment):
    def init_database(self):
        self.define_training_fields(fields=[("input", np.ndarray), ("ground_truth", np.ndarray)])
        self.define_additional_fields(fields=("force", np.ndarray))

    def step(self):
        self.set_training_data(input=np.ones(3), ground_truth=np.zeros(1))
        self.set_additional_data(force=np.ones(2))


def test_define_fields_takes_deepphysx_fields_keyword():
    env = prepare_environment(DeepPhysXStyle())
    env.step()
    assert {name: f.training for name, f in env.fields.items()} == {"input": True, "ground_truth": True, "force": False}
    assert env.sample["force"].shape == (2,)


def test_readme_mapping_table_lists_every_rename():
    text = README.read_text()
    section = text[text.index("## Coming from DeepPhysX"):]
    section = section[:section.index("\n## ", 3)]
    for table in (RENAMED, REPLACED):
        for config, names in table.items():
            for name in names:
                assert f"`{name}" in section, f"the README's DeepPhysX table does not mention {config}'s {name}"


def test_readme_mapping_table_answers_every_public_deepphysx_name():
    """Each DeepPhysX 22.12 name sits in a row of the table, with its dpx way or why it is not needed."""
    text = README.read_text()
    section = text[text.index("## Coming from DeepPhysX"):]
    section = section[:section.index("\n## ", 3)]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    for group, names in DEEPPHYSX_NAMES.items():
        for name in names:
            row = next((r for r in rows if re.search(rf"(`|\(|, ){name}\b", r.split(" | ")[0])), None)
            assert row is not None, f"the README's DeepPhysX table has no row for {group}: {name}"
            answer = row.split(" | ", 1)[1].strip(" |")
            assert len(answer) >= 5, f"the README's DeepPhysX row of {name} gives no dpx equivalent: {row}"


def test_load_samples_and_parameters_are_no_longer_refused():
    config = EnvironmentConfig("toy.spring", load_samples=True, only_first_epoch=False)
    assert config.load_samples and not config.only_first_epoch
    assert all("load_samples" not in names for names in REPLACED.values())

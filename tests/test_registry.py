"""The registry behind every config-named choice: loud on unknown or duplicate names."""

import pytest

from sb3dr_jax.configs.common import ConfigError
from sb3dr_jax.registry import Registry, pick


def test_get_register_and_pick():
    r = Registry("loss.terms")
    r.register("a", lambda x: x + 1)

    @r.register("b")
    def b(x):
        return 2 * x

    assert r.names() == ["a", "b"] and "a" in r and len(r) == 2 and list(r) == ["a", "b"]
    assert pick(r, "b", 3) == 6 and r.get("a")(1) == 2


def test_unknown_name_names_field_and_choices():
    r = Registry("longtail.method")
    r.register("bcl", 1)
    r.register("none", 0)
    with pytest.raises(ConfigError, match=r"longtail.method: unknown 'sdlcr'.*\['bcl', 'none'\]"):
        r.get("sdlcr")


def test_duplicate_name_refused():
    r = Registry("method")
    r.register("dca", 1)
    with pytest.raises(ValueError, match="registered twice"):
        r.register("dca", 2)

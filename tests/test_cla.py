import pytest

from sb3dr_jax.data.cla import Cla, ClaClass, read_cla, write_cla
from sb3dr_jax.data.errors import ClaError


def test_round_trip(tmp_path):
    cla = Cla(
        (
            ClaClass("chair", "0", ("1", "2", "3")),
            ClaClass("wine-bottle", "furniture", ()),
            ClaClass("cruise_ship", "0", ("77",)),
        )
    )
    write_cla(tmp_path / "a.cla", cla)
    assert read_cla(tmp_path / "a.cla") == cla
    assert cla.id_to_class()["77"] == "cruise_ship"
    assert cla.num_items() == 4


@pytest.mark.parametrize(
    "text, where",
    [
        ("PSB 1\n1 3\n\nchair 0 3\n1\n2\n", ":4"),  # count larger than ids (EOF)
        ("PSB 1\n2 3\n\nchair 0 3\n1\n2\n\ntable 0 1\n5\n", ":4"),  # runs into next header
        ("PSB 1\n1 1\n\nchair 0 1\n1\n2\n", ":4"),  # more ids than the count
        ("PSB 1\n2 1\n\nchair 0 1\n1\n", ":2"),  # class count mismatch
        ("PSB 1\n1 5\n\nchair 0 1\n1\n", ":2"),  # item count mismatch
        ("PSB 1\n1 1\n\nchair 0 x\n1\n", ":4"),  # non-numeric count
        ("XYZ\n1 1\n", ":1"),  # bad header
    ],
)
def test_errors_name_the_line(tmp_path, text, where):
    p = tmp_path / "bad.cla"
    p.write_text(text)
    with pytest.raises(ClaError) as e:
        read_cla(p)
    assert f"{p}{where}" in str(e.value)


def test_every_shared_cla_parses(shared_data):
    files = sorted(shared_data.glob("*/classes/*.cla"))
    assert len(files) == 6
    for f in files:
        cla = read_cla(f)
        assert cla.num_items() > 0 and len(cla.classes) > 0

"""The Grafana dashboard: it loads as a Grafana dashboard model, its layout and references are sound, its queries use
the server's series, and the provisioning and compose file deliver it."""

from __future__ import annotations

import itertools

import pytest
from deploy_support import (
    COMPOSE,
    DASHBOARD,
    DASHBOARD_PROVIDERS,
    DATASOURCES,
    dashboard,
    dashboard_queries,
    families,
    family_of,
    load_yaml,
    metric_names,
    panels,
    python_tool,
    series_problems,
    walk,
)

GRID_COLUMNS = 24
# Grafana 11 writes schema version 39 to 41; older versions are migrated on load, newer ones are not understood.
SCHEMA_VERSIONS = range(36, 42)


def provisioned_datasources() -> dict[str, str]:
    """uid -> type of every data source the provisioning defines."""
    return {source["uid"]: source["type"] for source in load_yaml(DATASOURCES)["datasources"]}


def test_loads_as_a_grafana_dashboard_model() -> None:
    """Grafana's own typed model (the Foundation SDK, generated from Grafana's schemas) decodes every panel with its
    panel plugin's options and every query as a Prometheus query."""
    python_tool("grafana_foundation_sdk", "'grafana-foundation-sdk==1769699379!11.6.0'")
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models import dashboard as model
    from grafana_foundation_sdk.models import prometheus

    register_default_plugins()
    loaded = model.Dashboard.from_json(dashboard())
    assert loaded.schema_version in SCHEMA_VERSIONS
    assert loaded.uid and loaded.title
    for panel in loaded.panels:
        if isinstance(panel, model.RowPanel):
            continue
        assert not isinstance(panel.options, dict), f"{panel.title!r}: no Grafana panel plugin {panel.type_val!r}"
        assert panel.targets and all(isinstance(target, prometheus.Dataquery) for target in panel.targets)
    JSONEncoder().encode(loaded)  # and it serialises back


def test_panel_ids_are_unique() -> None:
    ids = [panel["id"] for panel in dashboard()["panels"]]
    assert len(ids) == len(set(ids))


def test_panels_fit_the_grid_without_overlapping() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]
        for cell in itertools.product(range(grid["x"], grid["x"] + grid["w"]), range(grid["y"], grid["y"] + grid["h"])):
            assert cell not in cells, f"{panel['title']!r} overlaps {cells[cell]!r}"
            cells[cell] = panel["title"]


def test_every_datasource_reference_is_provisioned() -> None:
    defined = provisioned_datasources()
    references = [node["datasource"] for node in walk(dashboard()) if isinstance(node, dict) and "datasource" in node]
    assert references
    for reference in references:
        assert defined.get(reference["uid"]) == reference["type"], f"not provisioned: {reference}"


def test_query_refids_are_unique_per_panel() -> None:
    for panel in panels():
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


@pytest.mark.parametrize("query", dashboard_queries(), ids=lambda query: query.where)
def test_query_uses_exported_series(query) -> None:
    assert not series_problems(query.expr)


def test_every_exported_family_is_on_the_dashboard() -> None:
    """A series added to metrics.py and shown nowhere is easy to miss; this asks for a panel."""
    shown = {family_of(name) for query in dashboard_queries() for name in metric_names(query.expr)}
    assert {family.name for family in families()} <= shown


def test_provisioning_and_compose_deliver_the_dashboard() -> None:
    (provider,) = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    grafana = load_yaml(COMPOSE)["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"])
    assert mounts[f"./{DASHBOARD.parent.relative_to(COMPOSE.parent)}"] == provider["options"]["path"]
    assert mounts[f"./{DATASOURCES.parents[1].relative_to(COMPOSE.parent)}"] == "/etc/grafana/provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"

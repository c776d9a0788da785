"""LanceDB's import without what syncd gets nothing for (syncd/lazy_imports.py): the REST namespace client's
package ``__init__`` runs only when something uses it, and the ``overrides`` swap is confined to the import.
Each check runs in a fresh interpreter, since the point is what one process imports."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = r"""
import json, sys
import overrides
original = overrides.override
from syncd.lazy_imports import REST_CLIENT, import_lancedb
lancedb = import_lancedb()
client = sys.modules[REST_CLIENT]
facts = {"init_ran_at_import": "ApiClient" in vars(client),
         "api_imported": REST_CLIENT + ".api" in sys.modules,
         "models_imported": REST_CLIENT + ".models" in sys.modules,
         "override_restored": overrides.override is original}
import pyarrow as pa, tempfile
db = lancedb.connect(tempfile.mkdtemp())
table = db.create_table("t", pa.table({"id": [1, 2, 3], "vector": [[0.0, 1.0], [1.0, 0.0], [0.7, 0.7]]}))
facts["search"] = table.search([1.0, 0.0]).limit(1).to_list()[0]["id"]
facts["init_ran_by_local_use"] = "ApiClient" in vars(client)
# A use of the client itself runs the real __init__: the names it defines are there, the module is whole.
facts["api_client"] = client.ApiClient.__name__
facts["init_ran_on_use"] = "ApiClient" in vars(client) and REST_CLIENT + ".api" in sys.modules
try:
    client.NoSuchName
except AttributeError:
    facts["missing_name"] = "AttributeError"
print(json.dumps(facts))
"""


def test_the_rest_client_init_runs_only_on_use_and_overrides_is_restored() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    facts = json.loads(out.stdout)
    assert facts["init_ran_at_import"] is False and facts["api_imported"] is False
    assert facts["models_imported"] is True, "lance_namespace imports the models themselves, as usual"
    assert facts["override_restored"] is True
    assert facts["search"] == 2 and facts["init_ran_by_local_use"] is False
    assert facts["api_client"] == "ApiClient" and facts["init_ran_on_use"] is True
    assert facts["missing_name"] == "AttributeError"


def test_an_already_imported_client_is_left_alone() -> None:
    probe = ("import sys, lance_namespace_urllib3_client as c\n"
             "from syncd.lazy_imports import defer_rest_client\n"
             "print(defer_rest_client(), sys.modules['lance_namespace_urllib3_client'] is c, 'ApiClient' in vars(c))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["False", "True", "True"]


def test_a_missing_package_is_not_deferred() -> None:
    probe = ("import sys\nfrom syncd.lazy_imports import defer_rest_client\n"
             "print(defer_rest_client('syncd_no_such_package'), 'syncd_no_such_package' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["False", "False"]

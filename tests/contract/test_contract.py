"""The plugin contract's field rules hold alike in Python (contract.check, used by the rewrite)
and in the C++ header generated from it (the plugins' field parsing): the same table of good and
bad field sets goes through both, and each set is accepted by both or refused by both, for the
same reason where the reason is a cross-field rule."""

from __future__ import annotations

import itertools
import shutil
import subprocess

import pytest

from exporter.contract.header import HEADER
from exporter.contract.plugin_contract import CONTRACTS, ENUMS, PluginContract

HARNESS = r'''
#include "dit_export/plugin_contract.h"
#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>
using namespace dit_export;

// Each line: PLUGIN, then NAME=i:VALUE or NAME=s:TEXT per field, tab-separated; prints "ok" or the error.
int main()
{
    std::string line;
    while (std::getline(std::cin, line))
    {
        std::stringstream cells(line);
        std::string plugin, cell;
        std::getline(cells, plugin, '\t');
        std::vector<std::string> names, texts;
        std::vector<int32_t> ints;
        std::vector<char> kinds;
        while (std::getline(cells, cell, '\t'))
        {
            auto const eq = cell.find('=');
            names.push_back(cell.substr(0, eq));
            kinds.push_back(cell[eq + 1]);
            texts.push_back(cell.substr(eq + 3));
            ints.push_back(kinds.back() == 'i' ? std::stoi(texts.back()) : 0);
        }
        std::vector<FieldView> views;
        for (size_t i = 0; i < names.size(); ++i)
        {
            views.push_back(kinds[i] == 'i'
                    ? FieldView{names[i].c_str(), FieldType::kInt32, &ints[i], 1}
                    : FieldView{names[i].c_str(), FieldType::kChar, texts[i].c_str(),
                        static_cast<int32_t>(texts[i].size() + 1)});
        }
        auto const count = static_cast<int32_t>(views.size());
        std::string error;
        if (plugin == "DitIntGemm") { DitIntGemmFields f; error = parseDitIntGemmFields(views.data(), count, f); }
        else if (plugin == "DitFp4Gemm") { DitFp4GemmFields f; error = parseDitFp4GemmFields(views.data(), count, f); }
        else if (plugin == "DitVqGemm") { DitVqGemmFields f; error = parseDitVqGemmFields(views.data(), count, f); }
        else { error = "unknown plugin " + plugin; }
        std::printf("%s\n", error.empty() ? "ok" : error.c_str());
    }
}
'''


def _candidates(contract: PluginContract) -> dict[str, list]:
    """Values to try for each field: every choice of every enum (including values of the enum
    another contract allows), and for ints each bound, one past it, and values off the grid."""
    out = {}
    for f in contract.fields:
        if f.is_string:
            out[f.name] = list(dict.fromkeys(ENUMS.get(f.name, f.choices) + ("bogus",)))
        elif f.values:
            out[f.name] = sorted(set(f.values) | {min(f.values) - 1, max(f.values) + 1})
        else:
            step = f.multiple_of
            values = {f.minimum, f.minimum - step, f.minimum + step // 2 if step > 1 else f.minimum + 1, 64, 128, 192,
                      256 + step}
            if f.maximum:
                values |= {f.maximum, f.maximum + 1}
            out[f.name] = sorted(values)
    return out


def _field_sets(contract: PluginContract) -> list[dict]:
    candidates = _candidates(contract)
    names = list(candidates)
    sets = [dict(zip(names, combo)) for combo in itertools.product(*candidates.values())]
    good = next(s for s in sets if _python(contract, s) == "ok")
    sets += [{k: v for k, v in good.items() if k != name} for name in names]  # one field missing
    sets.append({**good, "no_such_field": 1})
    return sets


def _python(contract: PluginContract, fields: dict) -> str:
    try:
        contract.check(fields)
    except ValueError as e:
        return str(e)
    return "ok"


def _line(contract: PluginContract, fields: dict) -> str:
    cells = [f"{k}=s:{v}" if isinstance(v, str) else f"{k}=i:{v}" for k, v in fields.items()]
    return "\t".join([contract.name, *cells])


@pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler")
def test_python_and_cpp_accept_and_refuse_the_same_field_sets(tmp_path):
    source, binary = tmp_path / "fields.cpp", tmp_path / "fields"
    source.write_text(HARNESS)
    subprocess.run(["g++", "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", f"-I{HEADER.parents[1]}", str(source),
                    "-o", str(binary)], check=True)
    cases = [(contract, fields) for contract in CONTRACTS.values() for fields in _field_sets(contract)]
    cpp = subprocess.run([str(binary)], input="\n".join(_line(c, f) for c, f in cases) + "\n", capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert len(cpp) == len(cases)
    accepted = 0
    for (contract, fields), cpp_says in zip(cases, cpp):
        python_says = _python(contract, fields)
        assert (python_says == "ok") == (cpp_says == "ok"), (contract.name, fields, python_says, cpp_says)
        accepted += python_says == "ok"
        broken = [rule.why for rule in contract.rules if python_says.endswith(rule.why)]
        if broken:  # a cross-field rule: both name the same one
            assert cpp_says == f"{contract.name}: {broken[0]}", (fields, cpp_says)
    assert 0 < accepted < len(cases) / 2

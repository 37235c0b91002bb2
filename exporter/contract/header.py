"""The C++ header of the plugin contract, generated from ``contract.py``.

    python -m exporter.contract.header > plugins/include/dit_export/plugin_contract.h

For each plugin: its name, version, namespace, minimum compute capability and input / output
types; an enum per string field; a struct of its fields with the names TensorRT's PluginFields
carry; a parser from a PluginFieldCollection-like list of (name, type, data, length) that rejects
missing, unknown and out-of-range fields and fields that break the contract's rules; and the
index of each input given the fields (-1 when absent). The header depends on the C++17 standard
library only, so tests can include it without TensorRT.
"""

from __future__ import annotations

import re
from pathlib import Path

from exporter.contract.plugin_contract import (
    CONTRACTS,
    ENUMS,
    FP8_MIN_ARCH,
    FP8_PLUGINS,
    NONZERO,
    Field,
    PluginContract,
    Rule,
)
from exporter.numerics.kernel_layout import FP4_GROUP, INT4_GROUP

HEADER = Path(__file__).resolve().parents[2] / "plugins" / "include" / "dit_export" / "plugin_contract.h"


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[_\s]+", name))


def _enum_name(field: str) -> str:
    return _camel(field)


def _enumerator(value: str) -> str:
    return "k" + _camel(value)


def _comment(text: str, indent: str = "") -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > 96 - len(indent):
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return [f"{indent}// {text}" for text in lines]


def _enums() -> list[str]:
    out = []
    for field, values in ENUMS.items():
        name = _enum_name(field)
        enumerators = ", ".join(f"{_enumerator(v)} = {i}" for i, v in enumerate(values))
        out += [f"enum class {name} : int32_t {{ {enumerators} }};", "",
                f"inline bool parse{name}(std::string_view text, {name}& out)", "{"]
        for v in values:
            out.append(f'    if (text == "{v}") {{ out = {name}::{_enumerator(v)}; return true; }}')
        out += ["    return false;", "}", "",
                f"inline char const* toString({name} value)", "{", "    switch (value)", "    {"]
        for v in values:
            out.append(f'    case {name}::{_enumerator(v)}: return "{v}";')
        out += ["    }", '    return "";', "}", "",
                f"inline void assignField({name}& field, FieldView const& e)", "{",
                f"    parse{name}(e.text(), field);", "}", ""]
    return out


def _is(field: str, values, var: str) -> str:
    """C++: the field's value is one of ``values`` (enumerators for string fields)."""
    if field in ENUMS:
        return " || ".join(f"{var}.{field} == {_enum_name(field)}::{_enumerator(v)}" for v in values)
    return " || ".join(f"{var}.{field} == {v}" for v in values)


def _condition(when, var: str) -> str:
    name, values = when
    return f"{var}.{name} != 0" if values == NONZERO else _is(name, values, var)


def _field_spec(f: Field) -> str:
    """C++: the FieldSpec initializer of a field."""
    values = ", ".join(map(str, f.values))
    choices = ", ".join(f'"{v}"' for v in f.choices)
    kind = "FieldType::kChar" if f.is_string else "FieldType::kInt32"
    return (f'{{"{f.name}", {kind}, {f.minimum}, {f.maximum}, {f.multiple_of}, {len(f.values)}, {{{values}}}, '
            f'{len(f.choices)}, {{{choices}}}, "{f.rule()}"}}')


def _rule_broken(rule: Rule) -> str:
    then = []
    if rule.then_values:
        then.append(f"!({_is(rule.then, rule.then_values, 'out')})")
    if rule.multiple_of:
        then.append(f"out.{rule.then} % {rule.multiple_of} != 0")
    return f"({_is(rule.when, rule.when_values, 'out')}) && ({' || '.join(then)})"


def _field_parser() -> list[str]:
    """C++: what a field may be (FieldSpec) and the one parser every plugin's fields go through."""
    fields = [f for c in CONTRACTS.values() for f in c.fields]
    most_values = max(len(f.values) for f in fields)
    most_choices = max(len(f.choices) for f in fields)
    return [
        "// What a field may be: an int32 within bounds (maximum 0: none), a multiple of multipleOf and,",
        "// when values are listed, one of them; or one of the listed texts. rule says it in words.",
        "struct FieldSpec", "{", "    char const* name;", "    FieldType type;", "    int32_t minimum;",
        "    int32_t maximum;", "    int32_t multipleOf;", "    int32_t nbValues;",
        f"    int32_t values[{most_values}];", "    int32_t nbChoices;", f"    char const* choices[{most_choices}];",
        "    char const* rule;", "", "    bool allows(int32_t v) const", "    {",
        "        bool listed = nbValues == 0;", "        for (int32_t i = 0; i < nbValues; ++i)",
        "            listed = listed || v == values[i];",
        "        return listed && v >= minimum && (maximum == 0 || v <= maximum) && v % multipleOf == 0;", "    }", "",
        "    bool allows(std::string_view text) const", "    {",
        "        for (int32_t i = 0; i < nbChoices; ++i)", "            if (text == choices[i])",
        "                return true;", "        return false;", "    }", "};", "",
        "inline void assignField(int32_t& field, FieldView const& e)", "{",
        "    field = *static_cast<int32_t const*>(e.data);", "}", "",
        "// Reads Info's fields into out (visitFields(out, visit) calls visit(name, field) for each);",
        "// returns an empty string or what is wrong.",
        "template <typename Info, typename Fields, typename VisitFields>",
        "inline std::string parseFields(FieldView const* entries, int32_t count, Fields& out, VisitFields&& visitFields)",
        "{", "    bool seen[Info::kNbFields] = {};", "    for (int32_t i = 0; i < count; ++i)", "    {",
        "        FieldView const& e = entries[i];", "        std::string_view const name(e.name);",
        "        int32_t k = 0;", "        while (k < Info::kNbFields && name != Info::kFieldSpecs[k].name)",
        "            ++k;", "        if (k == Info::kNbFields)",
        '            return std::string(Info::kName) + ": unknown field " + std::string(name);',
        "        FieldSpec const& spec = Info::kFieldSpecs[k];",
        '        std::string const must = std::string(Info::kName) + ": field " + spec.name + " must be ";',
        "        if (spec.type == FieldType::kInt32 && (e.type != FieldType::kInt32 || e.length != 1))",
        '            return must + "one int32";',
        "        bool const allowed = spec.type == FieldType::kInt32",
        "            ? spec.allows(*static_cast<int32_t const*>(e.data))",
        "            : e.type == FieldType::kChar && spec.allows(e.text());",
        "        if (!allowed)", "            return must + spec.rule;",
        "        visitFields(out, [&](char const* field, auto& value) {", "            if (name == field)",
        "                assignField(value, e);", "        });", "        seen[k] = true;", "    }",
        "    for (int32_t k = 0; k < Info::kNbFields; ++k)", "        if (!seen[k])",
        '            return std::string(Info::kName) + ": missing field " + Info::kFieldSpecs[k].name;',
        '    return "";', "}", ""]


def _plugin(c: PluginContract) -> list[str]:
    s = f"{c.name}Fields"
    out = [f"// ---- {c.name} ----", *_comment(c.doc), "",
           f"struct {c.name}Info", "{",
           f'    static constexpr char const* kName = "{c.name}";',
           f'    static constexpr char const* kVersion = "{c.version}";',
           f'    static constexpr char const* kNamespace = "{c.namespace}";',
           "    // Compute capability (major * 10 + minor) the plugin's kernels need at least.",
           f"    static constexpr int32_t kMinArch = {FP8_MIN_ARCH if c.name in FP8_PLUGINS else 0};",
           f"    static constexpr int32_t kNbFields = {len(c.fields)};",
           "    static constexpr FieldSpec kFieldSpecs[kNbFields] = {",
           *(f"        {_field_spec(f)}," for f in c.fields),
           "    };",
           f"    static constexpr int32_t kMaxInputs = {len(c.inputs)};",
           "    static constexpr char const* kInputNames[kMaxInputs] = {"
           + ", ".join(f'"{p.name}"' for p in c.inputs) + "};",
           "    static constexpr PortType kInputTypes[kMaxInputs] = {"
           + ", ".join(_PORT_TYPES[p.dtype] for p in c.inputs) + "};",
           f"    static constexpr int32_t kNbOutputs = {len(c.outputs)};",
           f"    static constexpr PortType kOutputType = {_PORT_TYPES[c.outputs[0].dtype]};",
           "};", "", f"struct {s}", "{"]
    for f in c.fields:
        out += _comment(f"{f.doc}: {f.rule()}", "    ")
        out.append(f"    {_enum_name(f.name) if f.is_string else 'int32_t'} {f.name}{{}};")
    out += ["};", "",
            "// Calls visit(name, field) for every field, in the contract's order.",
            "template <typename Visitor>",
            f"inline void visit{s}({s}& f, Visitor&& visit)", "{"]
    out += [f'    visit("{f.name}", f.{f.name});' for f in c.fields]
    out += ["}", "",
            "// Reads the fields from (name, type, data, length) entries; returns an empty string or what is wrong.",
            f"inline std::string parse{s}(FieldView const* entries, int32_t count, {s}& out)", "{",
            f"    std::string const wrong = parseFields<{c.name}Info>(entries, count, out,",
            f"        [](auto& fields, auto&& visit) {{ visit{s}(fields, visit); }});",
            "    if (!wrong.empty())", "        return wrong;"]
    for rule in c.rules:
        out += [f"    if ({_rule_broken(rule)})", f'        return "{c.name}: {rule.why}";']
    out += ['    return "";', "}", "",
            "// Input indices given the fields (-1 where the input is absent), and the contract port",
            "// (index into kInputNames / kInputTypes) of each input position.",
            f"struct {c.name}Inputs", "{"]
    for p in c.inputs:
        out += _comment(f"{p.dtype} {p.shape}: {p.doc}", "    ")
        out.append(f"    int32_t {p.name}{{-1}};")
    out += ["    int32_t count{0};", f"    int32_t port[{c.name}Info::kMaxInputs]{{}};", "};", "",
            f"inline {c.name}Inputs {_lower_first(c.name)}Inputs({s} const& f)", "{",
            f"    {c.name}Inputs in;"]
    for i, p in enumerate(c.inputs):
        if p.when is None:
            out.append(f"    in.port[in.count] = {i};")
            out.append(f"    in.{p.name} = in.count++;")
        else:
            out.append(f"    if ({_condition(p.when, 'f')})")
            out.append("    {")
            out.append(f"        in.port[in.count] = {i};")
            out.append(f"        in.{p.name} = in.count++;")
            out.append("    }")
    out += ["    return in;", "}", ""]
    return out


def _lower_first(name: str) -> str:
    return name[0].lower() + name[1:]


_PORT_TYPES = {"INT8": "PortType::kInt8", "FLOAT": "PortType::kFloat32", "FLOAT16": "PortType::kFloat16",
               "INT64": "PortType::kInt64"}


def generate() -> str:
    contracts = list(CONTRACTS.values())
    lines = [
        "// Generated by `python -m exporter.contract.header` from exporter/contract/plugin_contract.py: do not edit.",
        "// The contract of the dit-export TensorRT plugins: names, fields and inputs.",
        "#pragma once", "", "#include <cstdint>", "#include <string>", "#include <string_view>", "",
        "namespace dit_export", "{", "",
        "// The field types the plugins read (TensorRT's PluginFieldType kINT32 and kCHAR).",
        "enum class FieldType : int32_t { kInt32, kChar };", "",
        "// Element types of plugin inputs and outputs.",
        "enum class PortType : int32_t { kInt8, kFloat32, kFloat16, kInt64 };", "",
        "// One plugin field as the creator receives it: a view, no ownership.",
        "struct FieldView", "{", "    char const* name;", "    FieldType type;", "    void const* data;",
        "    int32_t length;", "",
        "    std::string_view text() const",
        "    {",
        "        std::string_view s(static_cast<char const*>(data), static_cast<size_t>(length));",
        "        return s.substr(0, s.find('\\0'));  // TensorRT's kCHAR fields may count the terminator",
        "    }", "};", "",
        "// Channels per group of the FP4 and UINT4 activation quantizers (exporter/numerics/kernel_layout.py).",
        f"constexpr int32_t kFp4ActGroup = {FP4_GROUP};", f"constexpr int32_t kInt4ActGroup = {INT4_GROUP};", "",
        *_enums(),
        *_field_parser(),
    ]
    for c in contracts:
        lines += _plugin(c)
    lines += ["} // namespace dit_export", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(generate(), end="")

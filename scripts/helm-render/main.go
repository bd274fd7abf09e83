// helm-render renders a Helm chart the way `helm template` does, for the
// tests: no helm binary can be installed on our machines (not in Debian 12,
// PyPI or npm, and building it needs Go modules from the network), but Helm's
// template engine is Go's text/template with Sprig, which Debian packages.
//
// What of Helm's engine (helm.sh/helm/v3/pkg/engine) it implements:
//   - .Values: the chart's values.yaml merged with --set key.path=value
//     overrides (scalars typed like Helm's strvals: true/false, null, integers,
//     otherwise strings); .Release.{Name,Namespace,Service,IsInstall};
//     .Chart.{Name,Version,AppVersion,...} from Chart.yaml.
//   - Functions: Sprig's TxtFuncMap without env/expandenv (as Helm), plus
//     Helm's include, tpl, required, toYaml, fromYaml, toJson, fromJson.
//   - All templates (templates/*, including _*.tpl partials) parse into one set,
//     named <chart>/templates/<file>; files starting with "_" render nothing.
//   - missingkey=zero with "<no value>" printed as "", as `helm template`;
//     -strict uses missingkey=error, as `helm lint --strict`.
//   - Output: each template's non-empty output after "---" and
//     "# Source: <chart>/templates/<file>".
//
// Not implemented (the chart uses none): subcharts, .Files, .Capabilities,
// .Template, lookup, crds/ output (--include-crds), list syntax in --set.
//
// Build from Debian's packages: GO111MODULE=off GOPATH=/usr/share/gocode go build
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig" // v3.2.3; GOPATH mode has no /v3 suffix
	"sigs.k8s.io/yaml"             // what Helm's toYaml/fromYaml and values parsing use
)

type setFlags []string

func (s *setFlags) String() string     { return strings.Join(*s, ",") }
func (s *setFlags) Set(v string) error { *s = append(*s, v); return nil }

func main() {
	var sets setFlags
	name := flag.String("name", "release-name", "release name")
	namespace := flag.String("namespace", "default", "release namespace")
	strict := flag.Bool("strict", false, "fail on a missing value (missingkey=error)")
	flag.Var(&sets, "set", "key.path=value override (repeatable)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: helm-render [-name N] [-namespace NS] [-strict] [-set k=v]... CHART_DIR")
		os.Exit(2)
	}
	out, err := render(flag.Arg(0), *name, *namespace, *strict, sets)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helm-render:", err)
		os.Exit(1)
	}
	os.Stdout.WriteString(out)
}

func readYAML(path string) (map[string]interface{}, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	m := map[string]interface{}{}
	if err := yaml.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// setValue applies one --set override: dots separate nested keys, "\." is a
// dot inside a key (as in Helm: nodeSelector.kubernetes\.io/os=linux).
func setValue(values map[string]interface{}, assignment string) error {
	key, raw, ok := strings.Cut(assignment, "=")
	if !ok || key == "" {
		return fmt.Errorf("--set %q: want key=value", assignment)
	}
	var value interface{} = raw
	if raw == "true" || raw == "false" {
		value = raw == "true"
	} else if raw == "null" {
		value = nil
	} else if n, err := strconv.ParseInt(raw, 10, 64); err == nil {
		value = n
	}
	parts := strings.Split(strings.ReplaceAll(key, `\.`, "\x00"), ".")
	for i := range parts {
		parts[i] = strings.ReplaceAll(parts[i], "\x00", ".")
	}
	node := values
	for _, p := range parts[:len(parts)-1] {
		child, ok := node[p].(map[string]interface{})
		if !ok {
			child = map[string]interface{}{}
			node[p] = child
		}
		node = child
	}
	node[parts[len(parts)-1]] = value
	return nil
}

func render(chartDir, release, namespace string, strict bool, sets []string) (string, error) {
	chart, err := readYAML(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		return "", err
	}
	values, err := readYAML(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		return "", err
	}
	for _, s := range sets {
		if err := setValue(values, s); err != nil {
			return "", err
		}
	}
	// Helm's .Chart fields are capitalised (Name, Version, AppVersion, ...).
	chartObj := map[string]interface{}{}
	for k, v := range chart {
		chartObj[strings.ToUpper(k[:1])+k[1:]] = v
	}
	top := map[string]interface{}{
		"Values":  values,
		"Chart":   chartObj,
		"Release": map[string]interface{}{"Name": release, "Namespace": namespace, "Service": "Helm", "IsInstall": true},
	}

	missing := "missingkey=zero"
	if strict {
		missing = "missingkey=error"
	}
	set := template.New("chart").Option(missing)
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env")
	delete(funcs, "expandenv")
	funcs["toYaml"] = func(v interface{}) string {
		b, err := yaml.Marshal(v)
		if err != nil {
			return "" // Helm also renders an unmarshalable value as ""
		}
		return strings.TrimSuffix(string(b), "\n")
	}
	funcs["fromYaml"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := yaml.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	funcs["toJson"] = func(v interface{}) string { b, _ := json.Marshal(v); return string(b) }
	funcs["fromJson"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil || v == "" {
			return v, errors.New(msg)
		}
		return v, nil
	}
	funcs["include"] = func(name string, data interface{}) (string, error) {
		var buf bytes.Buffer
		err := set.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := set.Clone()
		if err == nil {
			t, err = t.New("tpl").Parse(text)
		}
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		err = t.Execute(&buf, data)
		return buf.String(), err
	}
	set.Funcs(funcs)

	chartName, _ := chart["name"].(string)
	files, err := filepath.Glob(filepath.Join(chartDir, "templates", "*"))
	if err != nil {
		return "", err
	}
	sort.Strings(files)
	var names []string
	for _, f := range files {
		text, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		name := chartName + "/templates/" + filepath.Base(f)
		if _, err := set.New(name).Parse(string(text)); err != nil {
			return "", err
		}
		if !strings.HasPrefix(filepath.Base(f), "_") {
			names = append(names, name)
		}
	}
	var out strings.Builder
	for _, name := range names {
		var buf bytes.Buffer
		if err := set.ExecuteTemplate(&buf, name, top); err != nil {
			return "", err
		}
		doc := strings.ReplaceAll(buf.String(), "<no value>", "")
		if strings.TrimSpace(doc) == "" {
			continue
		}
		fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", name, doc)
	}
	return out.String(), nil
}

// kstatus-check prints the kstatus status (sigs.k8s.io/cli-utils/pkg/kstatus, the library
// Flux's healthChecks and `flux`/kustomize-controller wait with) of each YAML file it is given:
// "<file> <status> <message>" per line. scripts/check-monitoring.sh compares it with the
// `kstatus:` expectations of the Argo CD health_test.yaml.
package main

import (
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

func main() {
	failed := false
	for _, path := range os.Args[1:] {
		data, err := os.ReadFile(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			failed = true
			continue
		}
		// YAML -> JSON -> Unstructured: integers stay int64, as from the API server.
		j, err := yaml.YAMLToJSON(data)
		u := &unstructured.Unstructured{}
		if err == nil {
			err = u.UnmarshalJSON(j)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
			failed = true
			continue
		}
		res, err := status.Compute(u)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
			failed = true
			continue
		}
		fmt.Printf("%s %s %s\n", path, res.Status, res.Message)
	}
	if failed {
		os.Exit(1)
	}
}

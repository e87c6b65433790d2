// Command controlplane is one multi-call binary holding every Kubernetes program the
// local cluster needs, like the old hyperkube: the shared Kubernetes packages are
// compiled and linked once instead of six times, which matters on a 2-core machine.
//
// It dispatches on the name it was invoked by (a symlink such as bin/kubectl) or, when
// invoked as controlplane itself, on its first argument (`controlplane kubectl get pods`).
package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"

	_ "time/tzdata" // CronJob time zones, as the upstream mains do

	"go.etcd.io/etcd/server/v3/etcdmain"
	helmcmd "helm.sh/helm/v4/pkg/cmd"
	helmkube "helm.sh/helm/v4/pkg/kube"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format, as upstream
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics, as upstream
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric, as upstream
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

// programs maps each program name to a function that runs it with os.Args already
// rewritten so that os.Args[0] is the program name; each returns the exit code.
var programs = map[string]func() int{
	"etcd": func() int {
		etcdmain.Main(os.Args)
		return 0
	},
	"kube-apiserver": func() int {
		return cli.Run(apiserver.NewAPIServerCommand())
	},
	"kube-controller-manager": func() int {
		return cli.Run(controllermanager.NewControllerManagerCommand())
	},
	"kube-scheduler": func() int {
		return cli.Run(scheduler.NewSchedulerCommand())
	},
	"kubectl": func() int {
		// kubectl reads its verbosity before cobra parses flags (see cmd/kubectl upstream).
		_, _ = logs.GlogSetter(kubectlcmd.GetLogVerbosity(os.Args))
		if err := cli.RunNoErrOutput(kubectlcmd.NewDefaultKubectlCommand()); err != nil {
			kubectlutil.CheckErr(err)
		}
		return 0
	},
	"helm": func() int {
		// The field manager recorded by server-side apply stays "helm" whatever the link is named.
		helmkube.ManagedFieldsManager = "helm"
		root, err := helmcmd.NewRootCmd(os.Stdout, os.Args[1:], helmcmd.SetupLogging)
		if err != nil {
			slog.Warn("command failed", slog.Any("error", err))
			return 1
		}
		if err := root.Execute(); err != nil {
			if cerr, ok := errors.AsType[helmcmd.CommandError](err); ok {
				return cerr.ExitCode
			}
			return 1
		}
		return 0
	},
}

func names() []string {
	out := make([]string, 0, len(programs))
	for name := range programs {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

func main() {
	name := filepath.Base(os.Args[0])
	if _, ok := programs[name]; !ok {
		if len(os.Args) < 2 {
			fmt.Fprintf(os.Stderr, "usage: %s PROGRAM [ARGS...]; programs: %v\n", name, names())
			os.Exit(2)
		}
		name = os.Args[1]
		os.Args = os.Args[1:]
	}
	run, ok := programs[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "unknown program %q; programs: %v\n", name, names())
		os.Exit(2)
	}
	os.Exit(run())
}

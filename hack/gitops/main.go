// gitops-check: what GitOps tools conclude about Kubernetes objects, computed by the code they run.
//
//	gitops-check kstatus              < objects.json   the kstatus library's status (Flux, kpt)
//	gitops-check argocd-health FILE   < objects.json   an Argo CD health.lua, run as Argo CD runs it
//
// Objects come as JSON on stdin (one object, or a List); one JSON line is printed an object: its name, the
// status (kstatus: Current, InProgress, Failed, Terminating, Unknown; Argo CD: Healthy, Progressing, Degraded,
// Suspended, Missing, Unknown) and the message. The tests run it against live ModelDeployments.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/fluxcd/cli-utils/pkg/kstatus/status"
	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	k8sjson "k8s.io/apimachinery/pkg/util/json"
)

type line struct {
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if len(os.Args) < 2 || (os.Args[1] == "argocd-health" && len(os.Args) != 3) {
		fail(fmt.Errorf("usage: gitops-check kstatus | gitops-check argocd-health health.lua  (objects on stdin)"))
	}
	var script string
	if os.Args[1] == "argocd-health" {
		b, err := os.ReadFile(os.Args[2])
		if err != nil {
			fail(err)
		}
		script = string(b)
	} else if os.Args[1] != "kstatus" {
		fail(fmt.Errorf("unknown check %q", os.Args[1]))
	}
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err)
	}
	var obj map[string]interface{}
	// Kubernetes' own decoder: integral numbers as int64, as the libraries' accessors expect.
	if err := k8sjson.Unmarshal(raw, &obj); err != nil {
		fail(err)
	}
	items := []interface{}{obj}
	if list, ok := obj["items"].([]interface{}); ok {
		items = list
	}
	out := json.NewEncoder(os.Stdout)
	for _, item := range items {
		u := &unstructured.Unstructured{Object: item.(map[string]interface{})}
		var result line
		if script != "" {
			result, err = argoHealth(u, script)
		} else {
			result, err = kstatus(u)
		}
		if err != nil {
			fail(err)
		}
		if err := out.Encode(result); err != nil {
			fail(err)
		}
	}
}

func kstatus(u *unstructured.Unstructured) (line, error) {
	result, err := status.Compute(u)
	if err != nil {
		return line{}, err
	}
	return line{u.GetName(), string(result.Status), result.Message}, nil
}

// argoHealth runs a health.lua as Argo CD's util/lua does: gopher-lua with only the package, base and table
// libraries open, the object as the global `obj`, a time limit, and a table {status, message} as the answer.
func argoHealth(u *unstructured.Unstructured, script string) (line, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{{lua.LoadLibName, lua.OpenPackage}, {lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable}} {
		l.Push(l.NewFunction(lib.open))
		l.Push(lua.LString(lib.name))
		l.Call(1, 0)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", toLua(l, u.Object))
	if err := l.DoString(script); err != nil {
		return line{}, err
	}
	answer, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return line{}, fmt.Errorf("%s: the script returned %s, not a table", u.GetName(), l.Get(-1).Type())
	}
	return line{u.GetName(), lua.LVAsString(answer.RawGetString("status")),
		lua.LVAsString(answer.RawGetString("message"))}, nil
}

func toLua(l *lua.LState, v interface{}) lua.LValue {
	switch x := v.(type) {
	case map[string]interface{}:
		t := l.NewTable()
		for k, item := range x {
			t.RawSetString(k, toLua(l, item))
		}
		return t
	case []interface{}:
		t := l.NewTable()
		for _, item := range x {
			t.Append(toLua(l, item))
		}
		return t
	case string:
		return lua.LString(x)
	case bool:
		return lua.LBool(x)
	case int64:
		return lua.LNumber(x)
	case float64:
		return lua.LNumber(x)
	case nil:
		return lua.LNil
	default:
		return lua.LString(fmt.Sprint(x))
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "gitops-check:", err)
	os.Exit(1)
}

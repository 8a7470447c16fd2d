// pulumi-language-python: a small Python language host for the Pulumi engine.
//
// Why our own: the official host (module
// github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3) is not
// served by the Go module proxy reachable from this project's build machines,
// so scripts/build-pulumi-tools.sh builds this one instead. It speaks the same
// LanguageRuntime gRPC protocol (sdk/v3/proto/go) and runs programs the same
// way: through the `pulumi-language-python-exec` shim shipped in the
// github.com/pulumi/pulumi/sdk/v3 module (python/cmd/), installed next to this
// binary.
//
// Scope (what `pulumi preview/up/refresh/destroy/stack/config/about` need):
//   - Run: starts `<python> -u <dir of this binary>/pulumi-language-python-exec
//     --monitor … --engine … --project … --stack … --pwd … --dry_run … --parallel …
//     [--tracing …] [--organization …] [--root_directory …] <program> <args…>`
//     with PULUMI_CONFIG (JSON object) and PULUMI_CONFIG_SECRET_KEYS (JSON
//     array) in its environment, stdout/stderr passed through to the engine.
//     Exit code 32 (the shim already reported the error) => bail; any other
//     non-zero exit code => an error message.
//   - GetRequiredPackages / GetRequiredPlugins: always empty. The project's
//     provider plugins are installed in PULUMI_HOME up front; the engine loads
//     them on demand, with the version the Python SDK sends on each resource.
//   - InstallDependencies: no-op (the project manages its own virtualenv).
//   - GetPluginInfo, Handshake, About, GetProgramDependencies (pip list),
//     RuntimeOptionsPrompts (none).
//   - Not implemented (Unimplemented): Template, RunPlugin (plugins written in
//     Python), GenerateProgram/Project/Package, Pack, Link, Cancel, debugging.
//
// Python interpreter: runtime option `virtualenv` (relative to the project
// root) => <venv>/bin/python with VIRTUAL_ENV and PATH set, PYTHONHOME unset;
// otherwise $PULUMI_PYTHON_CMD, else `python3`, else `python` on PATH.
// Toolchains other than pip are rejected (uv: only with an explicit virtualenv).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/pulumi/pulumi/sdk/v3/go/common/version"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/emptypb"
)

const (
	execShimName = "pulumi-language-python-exec"

	// The exec shim exits with this code after it has shown the error to the user
	// (pulumi.log.error): the engine must then fail without adding a message.
	exitErrorAlreadyReported = 32

	// Same limit as sdk/v3/go/common/util/rpcutil (the engine's side uses it too).
	maxRPCMessageSize = 400 * 1024 * 1024
)

var (
	logToStderr bool
	verbosity   int
)

// debugf logs to stderr when the engine asked for verbose logs (-v=N --logtostderr,
// passed on by `pulumi --logflow`). Plain stderr is shown to the user, so stay quiet otherwise.
func debugf(level int, format string, args ...any) {
	if logToStderr && verbosity >= level {
		fmt.Fprintf(os.Stderr, "pulumi-language-python: "+format+"\n", args...)
	}
}

func main() {
	var tracing, useExecutor string
	flag.StringVar(&tracing, "tracing", "", "Emit tracing to a Zipkin-compatible tracing endpoint")
	flag.StringVar(&useExecutor, "use-executor", "", "Use this exec shim instead of the one next to the binary")
	flag.BoolVar(&logToStderr, "logtostderr", false, "Log to stderr")
	flag.IntVar(&verbosity, "v", 0, "Log verbosity")
	printVersion := flag.Bool("version", false, "Print the version and exit")
	flag.Parse()
	if *printVersion {
		fmt.Println(version.Version)
		return
	}

	// The engine passes its own gRPC address as the last positional argument.
	engineAddress := ""
	if args := flag.Args(); len(args) > 0 {
		engineAddress = args[len(args)-1]
	}

	execPath := useExecutor
	if execPath == "" {
		self, err := os.Executable()
		if err == nil {
			self, err = filepath.EvalSymlinks(self)
		}
		if err != nil {
			fatalf("cannot determine the path of this executable: %v", err)
		}
		execPath = filepath.Join(filepath.Dir(self), execShimName)
	}
	if _, err := os.Stat(execPath); err != nil {
		fatalf("missing executor %s: %v", execPath, err)
	}

	cwd, err := os.Getwd()
	if err != nil {
		fatalf("cannot determine the working directory: %v", err)
	}

	h := &languageHost{execPath: execPath, engineAddress: engineAddress, tracing: tracing, cwd: cwd}

	// Serve like sdk/v3/go/common/util/rpcutil.ServeWithOptions (without its tracing
	// and logging dependencies): a kernel-chosen port on 127.0.0.1, health service.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fatalf("could not start language host RPC server: %v", err)
	}
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(maxRPCMessageSize))
	pulumirpc.RegisterLanguageRuntimeServer(srv, h)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	hs.SetServingStatus(pulumirpc.LanguageRuntime_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)

	// The engine reads the first line of stdout: the port to dial.
	fmt.Printf("%d\n", lis.Addr().(*net.TCPAddr).Port)

	// Serve until the engine kills us (it closes plugins by killing them).
	if err := srv.Serve(lis); err != nil {
		fatalf("language host RPC stopped serving: %v", err)
	}
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "pulumi-language-python: error: "+format+"\n", args...)
	os.Exit(1)
}

type languageHost struct {
	pulumirpc.UnimplementedLanguageRuntimeServer

	execPath string
	tracing  string
	cwd      string

	mu            sync.Mutex
	engineAddress string
}

func (h *languageHost) engine() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.engineAddress
}

// Handshake is only sent when the engine attaches to an already running host
// (PULUMI_DEBUG_LANGUAGES); a spawned host gets the engine address as argument.
func (h *languageHost) Handshake(
	_ context.Context, req *pulumirpc.LanguageHandshakeRequest,
) (*pulumirpc.LanguageHandshakeResponse, error) {
	if req.GetEngineAddress() != "" {
		h.mu.Lock()
		h.engineAddress = req.GetEngineAddress()
		h.mu.Unlock()
	}
	return &pulumirpc.LanguageHandshakeResponse{}, nil
}

func (h *languageHost) GetPluginInfo(context.Context, *emptypb.Empty) (*pulumirpc.PluginInfo, error) {
	return &pulumirpc.PluginInfo{Version: version.Version}, nil
}

func (h *languageHost) GetRequiredPlugins(
	context.Context, *pulumirpc.GetRequiredPluginsRequest,
) (*pulumirpc.GetRequiredPluginsResponse, error) {
	return &pulumirpc.GetRequiredPluginsResponse{}, nil
}

func (h *languageHost) GetRequiredPackages(
	context.Context, *pulumirpc.GetRequiredPackagesRequest,
) (*pulumirpc.GetRequiredPackagesResponse, error) {
	return &pulumirpc.GetRequiredPackagesResponse{}, nil
}

func (h *languageHost) InstallDependencies(
	*pulumirpc.InstallDependenciesRequest, grpc.ServerStreamingServer[pulumirpc.InstallDependenciesResponse],
) error {
	return nil
}

func (h *languageHost) RuntimeOptionsPrompts(
	context.Context, *pulumirpc.RuntimeOptionsRequest,
) (*pulumirpc.RuntimeOptionsResponse, error) {
	return &pulumirpc.RuntimeOptionsResponse{}, nil
}

func (h *languageHost) About(_ context.Context, req *pulumirpc.AboutRequest) (*pulumirpc.AboutResponse, error) {
	py, err := h.python(req.GetInfo())
	if err != nil {
		return nil, err
	}
	cmd := py.command("--version")
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s --version: %w", py.exe, err)
	}
	resp := &pulumirpc.AboutResponse{
		Executable: py.exe,
		Version:    strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(out)), "Python")),
		Metadata:   map[string]string{"toolchain": "pip", "languageHost": "local/pulumi-language-python"},
	}
	if py.venv != "" {
		resp.Metadata["virtualenv"] = py.venv
	}
	return resp, nil
}

func (h *languageHost) GetProgramDependencies(
	_ context.Context, req *pulumirpc.GetProgramDependenciesRequest,
) (*pulumirpc.GetProgramDependenciesResponse, error) {
	py, err := h.python(req.GetInfo())
	if err != nil {
		return nil, err
	}
	cmd := py.command("-m", "pip", "list", "--format", "json", "--disable-pip-version-check")
	if dir := req.GetInfo().GetProgramDirectory(); dir != "" {
		cmd.Dir = dir
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s -m pip list: %w: %s", py.exe, err, strings.TrimSpace(stderr.String()))
	}
	var pkgs []struct {
		Name    string `json:"name"`
		Version string `json:"version"`
	}
	if err := json.Unmarshal(out, &pkgs); err != nil {
		return nil, fmt.Errorf("parsing the output of pip list: %w", err)
	}
	resp := &pulumirpc.GetProgramDependenciesResponse{}
	for _, p := range pkgs {
		resp.Dependencies = append(resp.Dependencies, &pulumirpc.DependencyInfo{Name: p.Name, Version: p.Version})
	}
	return resp, nil
}

func (h *languageHost) Run(ctx context.Context, req *pulumirpc.RunRequest) (*pulumirpc.RunResponse, error) {
	if req.GetAttachDebugger() {
		return nil, errors.New("this Python language host does not support attaching a debugger")
	}
	info := req.GetInfo()
	py, err := h.python(info)
	if err != nil {
		return &pulumirpc.RunResponse{Error: err.Error()}, nil
	}

	args := []string{"-u", h.execPath}
	flagArg := func(name, value string) {
		if value != "" {
			args = append(args, "--"+name, value)
		}
	}
	flagArg("monitor", req.GetMonitorAddress())
	flagArg("engine", h.engine())
	flagArg("project", req.GetProject())
	flagArg("stack", req.GetStack())
	flagArg("pwd", req.GetPwd())
	flagArg("dry_run", strconv.FormatBool(req.GetDryRun()))
	flagArg("parallel", strconv.Itoa(int(req.GetParallel()))) // always present: the shim does int(parallel)
	flagArg("tracing", h.tracing)
	flagArg("organization", req.GetOrganization())
	flagArg("root_directory", info.GetRootDirectory())
	program := req.GetProgram()
	if program == "" {
		program = "." // runs <pwd>/__main__.py
	}
	args = append(args, program)
	args = append(args, req.GetArgs()...)

	config, err := json.Marshal(nonNilMap(req.GetConfig()))
	if err != nil {
		return nil, fmt.Errorf("serializing the configuration: %w", err)
	}
	secretKeys, err := json.Marshal(nonNilSlice(req.GetConfigSecretKeys()))
	if err != nil {
		return nil, fmt.Errorf("serializing the secret configuration keys: %w", err)
	}

	cmd := py.command(args...)
	cmd.Env = setEnv(cmd.Env, "PULUMI_CONFIG", string(config))
	cmd.Env = setEnv(cmd.Env, "PULUMI_CONFIG_SECRET_KEYS", string(secretKeys))
	if pwd := req.GetPwd(); pwd != "" {
		cmd.Dir = pwd
	}
	// Straight through to the engine, which shows them as the program's output.
	cmd.Stdout = os.Stdout
	cmd.Stderr = os.Stderr
	debugf(5, "Run: %s %s", cmd.Path, strings.Join(args, " "))

	if err := cmd.Run(); err != nil {
		var exitErr *exec.ExitError
		if !errors.As(err, &exitErr) {
			return &pulumirpc.RunResponse{
				Error: fmt.Sprintf("Problem executing program (could not run language executor): %v", err),
			}, nil
		}
		switch code := exitErr.ExitCode(); code {
		case exitErrorAlreadyReported:
			return &pulumirpc.RunResponse{Bail: true}, nil
		case -1: // killed by a signal
			return &pulumirpc.RunResponse{Error: fmt.Sprintf("Program exited unexpectedly: %v", exitErr)}, nil
		default:
			return &pulumirpc.RunResponse{Error: fmt.Sprintf("Program exited with non-zero exit code: %d", code)}, nil
		}
	}
	return &pulumirpc.RunResponse{}, nil
}

// pythonEnv is the interpreter to run and the environment to run it in.
type pythonEnv struct {
	exe  string
	venv string // absolute virtualenv path, or ""
	env  []string
}

func (p *pythonEnv) command(args ...string) *exec.Cmd {
	cmd := exec.Command(p.exe, args...)
	cmd.Env = append([]string(nil), p.env...)
	return cmd
}

// python picks the interpreter from the project's runtime options (virtualenv, toolchain),
// then PULUMI_PYTHON_CMD, python3, python.
func (h *languageHost) python(info *pulumirpc.ProgramInfo) (*pythonEnv, error) {
	opts := info.GetOptions().AsMap()
	str := func(key string) (string, error) {
		v, ok := opts[key]
		if !ok || v == nil {
			return "", nil
		}
		s, ok := v.(string)
		if !ok {
			return "", fmt.Errorf("runtime option %q in Pulumi.yaml must be a string, got %v", key, v)
		}
		return s, nil
	}
	toolchain, err := str("toolchain")
	if err != nil {
		return nil, err
	}
	venv, err := str("virtualenv")
	if err != nil {
		return nil, err
	}
	switch toolchain {
	case "", "pip":
	case "uv":
		if venv == "" {
			return nil, errors.New("runtime option toolchain: uv is only supported by this language host " +
				"together with an explicit virtualenv option")
		}
	default:
		return nil, fmt.Errorf("runtime option toolchain: %s is not supported by this language host "+
			"(supported: pip, or a virtualenv option)", toolchain)
	}

	env := os.Environ()
	if venv != "" {
		if !filepath.IsAbs(venv) {
			root := info.GetRootDirectory()
			if root == "" {
				root = h.cwd
			}
			venv = filepath.Join(root, venv)
		}
		exe := filepath.Join(venv, "bin", "python")
		if st, err := os.Stat(exe); err != nil || st.IsDir() {
			return nil, fmt.Errorf("the 'virtualenv' option in Pulumi.yaml is set to %q, but %q doesn't "+
				"appear to be a virtual environment (no bin/python); create it with: python3 -m venv %s",
				venv, venv, venv)
		}
		env = setEnv(env, "VIRTUAL_ENV", venv)
		env = setEnv(env, "PATH", filepath.Join(venv, "bin")+string(os.PathListSeparator)+os.Getenv("PATH"))
		env = unsetEnv(env, "PYTHONHOME")
		return &pythonEnv{exe: exe, venv: venv, env: env}, nil
	}

	if cmd := os.Getenv("PULUMI_PYTHON_CMD"); cmd != "" {
		exe, err := exec.LookPath(cmd)
		if err != nil {
			return nil, fmt.Errorf("PULUMI_PYTHON_CMD=%s: %w", cmd, err)
		}
		return &pythonEnv{exe: exe, env: env}, nil
	}
	for _, name := range []string{"python3", "python"} {
		if exe, err := exec.LookPath(name); err == nil {
			return &pythonEnv{exe: exe, env: env}, nil
		}
	}
	return nil, errors.New("failed to locate any of [python3 python] on your PATH (or set PULUMI_PYTHON_CMD)")
}

func nonNilMap(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

func nonNilSlice(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// setEnv returns env with every KEY=… entry replaced by a single KEY=value.
func setEnv(env []string, key, value string) []string {
	return append(unsetEnv(env, key), key+"="+value)
}

func unsetEnv(env []string, key string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, key+"=") {
			out = append(out, kv)
		}
	}
	return out
}

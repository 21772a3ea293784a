// Command host-exec serves the kubelet's /exec/{namespace}/{pod}/{container} endpoint for the
// test bed's host runner. The streaming side is the kubelet's own code (SPDY or WebSocket
// upgrade, channel protocols v1 to v4, the exit code in the status stream), so the API server
// talks to it exactly as it talks to a kubelet. The host runner proxies each /exec upgrade here
// with the argv that enters the container in a header; this program only runs that argv
// followed by the requested command.
//
// Usage: HOST_EXEC_TOKEN=<secret> host-exec -port <port> listens on 127.0.0.1 only (port 0: any
// free port) and prints "listening 127.0.0.1:<port>" once it does.
package main

import (
	"context"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	remotecommandconsts "k8s.io/apimachinery/pkg/util/remotecommand"
	"k8s.io/client-go/tools/remotecommand"
	kubeletremotecommand "k8s.io/kubelet/pkg/cri/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
)

const (
	// Base64 of a JSON array of strings: the argv that runs a command inside the container.
	prefixHeader = "X-Host-Runner-Exec"
	// Whatever listens on 127.0.0.1 is reachable by every local user, and this program runs any
	// argv it is given as root: only the runner, which knows the secret, may use it.
	tokenHeader = "X-Host-Runner-Token"
	tokenEnv    = "HOST_EXEC_TOKEN"
	// The runner's name for a session, for POST /end/<session> when its container stops.
	sessionHeader = "X-Host-Runner-Session"

	// A kubelet's default --streaming-connection-idle-timeout.
	idleTimeout = 4 * time.Hour
)

func main() {
	port := flag.Int("port", -1, "port to listen on, on 127.0.0.1 (0: any free port)")
	flag.Parse()
	token := os.Getenv(tokenEnv)
	if *port < 0 || token == "" {
		log.Fatalf("usage: %s=<secret> host-exec -port <port>", tokenEnv)
	}
	// The runner keeps our stdin open: when it goes, even by SIGKILL, so do we.
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(*port)))
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { serveExec(w, r, token) }),
		ReadHeaderTimeout: 30 * time.Second,
		// ServeExec hands the executor only the request's context, which nothing cancels once the
		// connection is hijacked: this one ends with the connection, and takes the command along.
		ConnContext: func(_ context.Context, c net.Conn) context.Context { return c.(*watchedConn).ctx },
	}
	// The runner waits for this line; with port 0 it learns the port without a race for it.
	fmt.Printf("listening %s\n", ln.Addr())
	log.Fatal(srv.Serve(watchingListener{ln}))
}

// sessions holds the way to end each running command, by session: a kubelet's exec processes die
// with their container, and these are host processes the container's stop does not reach.
var sessions = struct {
	sync.Mutex
	cancel map[string]context.CancelFunc
}{cancel: map[string]context.CancelFunc{}}

func serveExec(w http.ResponseWriter, req *http.Request, token string) {
	if subtle.ConstantTimeCompare([]byte(req.Header.Get(tokenHeader)), []byte(token)) != 1 {
		http.Error(w, "forbidden", http.StatusForbidden)
		return
	}
	if id, ok := strings.CutPrefix(req.URL.Path, "/end/"); ok && req.Method == http.MethodPost {
		sessions.Lock()
		if cancel := sessions.cancel[id]; cancel != nil {
			cancel()
		}
		sessions.Unlock()
		w.WriteHeader(http.StatusNoContent)
		return
	}
	prefix, err := argvPrefix(req.Header.Get(prefixHeader))
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	parts := strings.Split(strings.TrimPrefix(req.URL.Path, "/exec/"), "/")
	if !strings.HasPrefix(req.URL.Path, "/exec/") || len(parts) != 3 {
		http.NotFound(w, req)
		return
	}
	cmd := req.URL.Query()[corev1.ExecCommandParam]
	if len(cmd) == 0 {
		http.Error(w, "no command", http.StatusBadRequest)
		return
	}
	opts, err := kubeletremotecommand.NewOptions(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	// The command is killed on cancel, and ServeExec then reports its exit code (137).
	ctx, cancel := context.WithCancel(req.Context())
	defer cancel()
	if id := req.Header.Get(sessionHeader); id != "" {
		sessions.Lock()
		sessions.cancel[id] = cancel
		sessions.Unlock()
		defer func() {
			sessions.Lock()
			delete(sessions.cancel, id)
			sessions.Unlock()
		}()
	}
	// Not StreamProtocolV5Name: over SPDY the kubelet's handler knows v1 to v4 only (v5 is the
	// WebSocket protocol the API server translates).
	kubeletremotecommand.ServeExec(w, req.WithContext(ctx), hostExecutor{prefix}, parts[0]+"/"+parts[1], types.UID(""), parts[2],
		cmd, opts, idleTimeout, remotecommandconsts.DefaultStreamCreationTimeout,
		remotecommandconsts.SupportedStreamingProtocols)
}

func argvPrefix(header string) ([]string, error) {
	if header == "" {
		return nil, errors.New("no such container")
	}
	raw, err := base64.StdEncoding.DecodeString(header)
	if err != nil {
		return nil, err
	}
	var prefix []string
	if err := json.Unmarshal(raw, &prefix); err != nil || len(prefix) == 0 {
		return nil, fmt.Errorf("bad %s header", prefixHeader)
	}
	return prefix, nil
}

// hostExecutor runs the command as a host process behind the container's argv prefix.
type hostExecutor struct{ prefix []string }

func (e hostExecutor) ExecInContainer(ctx context.Context, _ string, _ types.UID, _ string, cmd []string,
	in io.Reader, out, errOut io.WriteCloser, _ bool, resize <-chan remotecommand.TerminalSize, _ time.Duration,
) error {
	argv := append(append([]string{}, e.prefix...), cmd...)
	c := exec.CommandContext(ctx, argv[0], argv[1:]...)
	// There is no pty: a tty session gets plain pipes, and its resize events go nowhere.
	if resize != nil {
		go func() {
			for range resize {
			}
		}()
	}
	if out != nil {
		c.Stdout = out
	}
	if errOut != nil {
		c.Stderr = errOut
	}
	// A child left in the background must not hold the session open through our pipes.
	c.WaitDelay = time.Second
	var stdin io.WriteCloser
	if in != nil {
		// Our own copy, not c.Stdin: Wait would otherwise wait for a client that never closes stdin.
		var err error
		if stdin, err = c.StdinPipe(); err != nil {
			return err
		}
	}
	if err := c.Start(); err != nil {
		return err
	}
	if stdin != nil {
		go func() {
			_, _ = io.Copy(stdin, in)
			_ = stdin.Close()
		}()
	}
	err := c.Wait()
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		// ServeExec reports an exit code only for a utilexec.ExitError that Exited(); a signal
		// becomes 128+n, as container runtimes report it.
		code := exitErr.ExitCode()
		if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
		return utilexec.CodeExitError{Err: err, Code: code}
	}
	if errors.Is(err, exec.ErrWaitDelay) {
		return nil
	}
	return err
}

// watchingListener gives every connection a context that ends when reading from it fails.
type watchingListener struct{ net.Listener }

func (l watchingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &watchedConn{Conn: c, ctx: ctx, cancel: cancel}, nil
}

type watchedConn struct {
	net.Conn
	ctx    context.Context
	cancel context.CancelFunc
}

func (c *watchedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	// net/http interrupts its own reads with a past deadline (on hijack): not an end.
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		c.cancel()
	}
	return n, err
}

func (c *watchedConn) Close() error {
	c.cancel()
	return c.Conn.Close()
}

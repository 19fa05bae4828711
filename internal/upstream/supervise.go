package upstream

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// steadyRun is how long a server must run before its next exit restarts it
// after the first backoff again instead of a longer one.
const steadyRun = 30 * time.Second

// supervise runs Command until ctx ends, restarting it with exponential
// backoff whenever it exits.
func (b *Backend) supervise(ctx context.Context) {
	backoff := b.cfg.RestartBackoff
	for {
		started := time.Now()
		err := b.runChild(ctx)
		if ctx.Err() != nil {
			return
		}
		if time.Since(started) > steadyRun {
			backoff = b.cfg.RestartBackoff
		}
		b.log.Warn("upstream server exited; restarting", "err", err, "retry_in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(backoff*2, MaxRestartBackoff)
	}
}

// runChild starts the server and waits until it exits, or until ctx ends and
// it has been stopped. The model is unavailable from the exit until a health
// check passes against the next run.
func (b *Backend) runChild(ctx context.Context) error {
	cmd := exec.Command(b.cfg.Command[0], b.cfg.Command[1:]...)
	cmd.Env = append(os.Environ(), b.cfg.Env...)
	cmd.Dir = b.cfg.Dir
	prog := filepath.Base(b.cfg.Command[0])
	stdout := &lineLogger{log: b.log, prefix: prog + ": ", stream: "stdout"}
	stderr := &lineLogger{log: b.log, prefix: prog + ": ", stream: "stderr"}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	// A grandchild that keeps the output pipes open must not block Wait.
	cmd.WaitDelay = 2 * time.Second
	setProcAttr(cmd)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", b.cfg.Command[0], err)
	}
	b.log.Info("started upstream server", "pid", cmd.Process.Pid, "command", b.cfg.Command)
	b.setRunning(true)
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	var err error
	select {
	case err = <-waited:
		if err == nil {
			err = fmt.Errorf("%s exited with status 0", prog)
		}
	case <-ctx.Done():
		err = b.stopChild(cmd, waited)
	}
	stdout.flush()
	stderr.flush()
	b.setRunning(false)
	b.setAvailable(false, fmt.Sprintf("the upstream server (%s) is not running: %v", prog, err))
	b.checkNow()
	return err
}

// stopChild sends SIGTERM to the server's process group, then SIGKILL after
// StopTimeout, and waits for it.
func (b *Backend) stopChild(cmd *exec.Cmd, waited <-chan error) error {
	_ = signalGroup(cmd, sigTerm)
	t := time.NewTimer(b.cfg.StopTimeout)
	defer t.Stop()
	select {
	case err := <-waited:
		b.log.Info("stopped upstream server", "pid", cmd.Process.Pid, "status", err)
		return err
	case <-t.C:
	}
	b.log.Warn("upstream server ignored SIGTERM; killing it", "pid", cmd.Process.Pid, "after", b.cfg.StopTimeout)
	_ = signalGroup(cmd, sigKill)
	return <-waited
}

func (b *Backend) setRunning(running bool) {
	b.mu.Lock()
	b.running = running
	b.mu.Unlock()
}

// lineLogger logs what a child writes, one record per line. exec copies
// each stream from its own goroutine, so Write needs no lock; flush runs
// after Wait.
type lineLogger struct {
	log    *slog.Logger
	prefix string
	stream string
	buf    []byte
}

// maxLogLine cuts lines that never end.
const maxLogLine = 8 << 10

func (w *lineLogger) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.emit(w.buf[:i])
		w.buf = w.buf[i+1:]
	}
	if len(w.buf) > maxLogLine {
		w.emit(w.buf)
		w.buf = nil
	}
	return len(p), nil
}

func (w *lineLogger) emit(line []byte) {
	line = bytes.TrimRight(line, "\r")
	if len(line) == 0 {
		return
	}
	w.log.Info(w.prefix+string(line), "stream", w.stream)
}

func (w *lineLogger) flush() {
	w.emit(w.buf)
	w.buf = nil
}

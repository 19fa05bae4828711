package clustertest

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"
)

// jsNodeStates is a page expression: "name=state" for each node card.
const jsNodeStates = `Array.from(document.querySelectorAll('#nodes [data-node]')).map(e => e.dataset.node + '=' + e.dataset.state).join(' ')`

// backgroundLoad sends completions one after another until stop is closed or
// max requests were sent, so the dashboard's charts have something to show.
func backgroundLoad(t *testing.T, c *Cluster, max int) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < max && ctx.Err() == nil; i++ {
			rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
			_, _, _, _ = c.Post(rctx, "/v1/completions", map[string]any{"model": c.Model, "prompt": "Once upon a time", "max_tokens": 48, "temperature": 0.8, "seed": i})
			rcancel()
			select {
			case <-ctx.Done():
			case <-time.After(150 * time.Millisecond):
			}
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); wg.Wait() }) }
	t.Cleanup(stop)
	return stop
}

// requireDashboard fails at once, saying why, when the coordinator serves no
// dashboard page, rather than after a browser timeout.
func requireDashboard(t *testing.T, c *Cluster) {
	t.Helper()
	resp, err := http.Get(c.API + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "/static/app.js") {
		t.Fatalf("GET / = %d, not the dashboard page; the coordinator must serve web.Handler() (cfg.Dashboard in internal/cli/coordinator.go)", resp.StatusCode)
	}
}

// TestDashboard loads the dashboard of a 3-node cluster in headless
// Chromium: it shows the nodes with no console error, draws live charts,
// and shows a SIGKILLed node as down within 10 s.
func TestDashboard(t *testing.T) {
	b := newBrowser(t)
	c := Start(t, Options{Nodes: 3})
	requireDashboard(t, c)
	stopLoad := backgroundLoad(t, c, 200)
	shots := t.TempDir()

	b.run(t, "open the dashboard", chromedp.Navigate(c.API+"/"))
	took := b.waitJS(t, "three ready nodes shown",
		`document.querySelectorAll('#nodes [data-node][data-state="ready"]').length === 3`, 10*time.Second)
	t.Logf("3 nodes shown %s after load", took.Round(time.Millisecond))
	if got, want := eval[string](t, b, jsNodeStates), "node-1=ready node-2=ready node-3=ready"; got != want {
		t.Errorf("node cards: got %q, want %q", got, want)
	}
	// Each card carries what the API says of the node.
	card := eval[string](t, b, `document.querySelector('[data-node="node-1"]').innerText`)
	for _, want := range []string{"node-1", "READY", c.Model, "in flight", "Served", "Last seen"} {
		if !strings.Contains(card, want) {
			t.Errorf("node-1 card lacks %q:\n%s", want, card)
		}
	}
	// Totals, models and the charts fill in as requests are served.
	b.waitJS(t, "requests counted", `parseInt(document.querySelector('[data-tile="requests"] .tile-value').textContent.replace(/\D/g, '')) > 0`, 20*time.Second)
	b.waitJS(t, "model placement listed", `(() => { const r = document.querySelector('#models tr[data-model="`+c.Model+`"]'); return !!r && r.innerText.includes('node-1, node-2, node-3'); })()`, 5*time.Second)
	b.waitJS(t, "request-rate chart drawn", `document.querySelector('#chart-rps path.line') !== null && document.querySelector('#chart-rps path.line').getAttribute('d').split('L').length >= 3`, 15*time.Second)
	b.waitJS(t, "latency chart drawn", `document.querySelectorAll('#chart-lat path.line').length >= 2`, 10*time.Second)
	b.screenshot(t, shots, "dashboard-3-nodes.png")

	killNode(t, c, "node-2")
	killed := time.Now()
	b.waitJS(t, "node-2 shown as down", `(() => { const e = document.querySelector('[data-node="node-2"]'); return !!e && e.dataset.state === 'down' && e.innerText.includes('DOWN'); })()`, 10*time.Second)
	t.Logf("node-2 shown DOWN %s after SIGKILL", time.Since(killed).Round(time.Millisecond))
	if got, want := eval[string](t, b, jsNodeStates), "node-1=ready node-3=ready node-2=down"; got != want {
		t.Errorf("node cards after the kill: got %q, want %q", got, want)
	}
	reason := eval[string](t, b, `document.querySelector('[data-node="node-2"] .reason').textContent`)
	if reason == "" {
		t.Error("the down node shows no reason")
	}
	stopLoad()
	b.screenshot(t, shots, "dashboard-node-down.png")

	// The dark scheme follows the OS setting.
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	_, err := chromedp.Call(ctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: "dark"}}})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if bg := eval[string](t, b, `getComputedStyle(document.body).backgroundColor`); bg != "rgb(15, 17, 21)" {
		t.Errorf("dark scheme background = %s, want rgb(15, 17, 21)", bg)
	}
	b.screenshot(t, shots, "dashboard-dark.png")

	// A narrow screen gets one column and no horizontal scrolling.
	b.run(t, "narrow viewport", chromedp.EmulateViewport(390, 844))
	b.waitJS(t, "fits a phone", `document.documentElement.scrollWidth <= window.innerWidth`, 5*time.Second)

	if errs := b.consoleErrors(nil); len(errs) > 0 {
		t.Errorf("the page reported %d console errors:\n%s", len(errs), strings.Join(errs, "\n"))
	}
}

// TestDashboardAPIKey checks the key prompt: a cluster with API keys makes
// the page ask for one, a wrong key is refused and asked again, the right
// one is kept in localStorage and used after a reload.
func TestDashboardAPIKey(t *testing.T) {
	b := newBrowser(t)
	const key = "sk-dashboard-test-key"
	c := Start(t, Options{Nodes: 1, APIKey: key})
	requireDashboard(t, c)

	b.run(t, "open the dashboard", chromedp.Navigate(c.API+"/"))
	b.waitJS(t, "key prompt shown", `document.getElementById('key-dialog').open`, 10*time.Second)
	b.screenshot(t, t.TempDir(), "dashboard-key-prompt.png")
	if n := eval[int](t, b, `document.querySelectorAll('#nodes [data-node]').length`); n != 0 {
		t.Fatalf("%d nodes shown without a key", n)
	}

	b.run(t, "enter a wrong key", chromedp.SendKeys(chromedp.ID("key-input"), "wrong-key"), chromedp.Click(chromedp.ID("key-submit")))
	b.waitJS(t, "wrong key refused", `document.getElementById('key-dialog').open && document.getElementById('key-why').textContent.includes('refused')`, 10*time.Second)

	b.run(t, "enter the key", chromedp.SendKeys(chromedp.ID("key-input"), key), chromedp.Click(chromedp.ID("key-submit")))
	b.waitJS(t, "node shown with the key", `!document.getElementById('key-dialog').open && document.querySelectorAll('#nodes [data-node="node-1"][data-state="ready"]').length === 1`, 10*time.Second)
	if got := eval[string](t, b, `localStorage.getItem('npumesh.apiKey')`); got != key {
		t.Errorf("localStorage key = %q, want %q", got, key)
	}

	b.run(t, "reload", chromedp.Reload())
	b.waitJS(t, "node shown after reload, no prompt", `!document.getElementById('key-dialog').open && document.querySelectorAll('#nodes [data-node="node-1"]').length === 1`, 10*time.Second)

	// The refused requests log 401s in the console; nothing else may.
	if errs := b.consoleErrors(func(m string) bool { return strings.HasPrefix(m, "log network:") && strings.Contains(m, "401") }); len(errs) > 0 {
		t.Errorf("the page reported %d console errors:\n%s", len(errs), strings.Join(errs, "\n"))
	}
}

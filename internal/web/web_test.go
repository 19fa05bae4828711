package web

import (
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

func get(t *testing.T, h http.Handler, method, path string) (*http.Response, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	resp := rec.Result()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestHandlerServes(t *testing.T) {
	h := Handler()
	cases := []struct {
		method, path string
		status       int
		ctype        string
		contains     string
	}{
		{"GET", "/", 200, "text/html", `<script src="/static/app.js" defer></script>`},
		{"HEAD", "/", 200, "text/html", ""},
		{"GET", "/static/app.js", 200, "javascript", `"use strict"`},
		{"GET", "/static/style.css", 200, "text/css", "prefers-color-scheme: dark"},
		{"GET", "/static/favicon.svg", 200, "image/svg+xml", "<svg"},
		{"GET", "/static/", 404, "", ""},
		{"GET", "/static/missing.js", 404, "", ""},
		{"GET", "/index.html", 404, "", ""},
		{"GET", "/api/v2/nodes", 404, "", ""},
		{"POST", "/", 405, "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			resp, body := get(t, h, tc.method, tc.path)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if tc.status != 200 {
				return
			}
			if ct := resp.Header.Get("Content-Type"); !strings.Contains(ct, tc.ctype) {
				t.Errorf("Content-Type %q, want %q", ct, tc.ctype)
			}
			if !strings.Contains(body, tc.contains) {
				t.Errorf("body lacks %q", tc.contains)
			}
			csp := resp.Header.Get("Content-Security-Policy")
			for _, want := range []string{"default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"} {
				if !strings.Contains(csp, want) {
					t.Errorf("Content-Security-Policy %q lacks %q", csp, want)
				}
			}
			if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
				t.Error("no X-Content-Type-Options: nosniff")
			}
		})
	}
}

// TestPageIsSelfContained keeps the page free of what it promises to avoid:
// HTML built from strings (data must go through textContent), inline
// scripts and styles (the CSP forbids them), and anything from another host.
func TestPageIsSelfContained(t *testing.T) {
	read := func(name string) string {
		b, err := files.ReadFile("static/" + name)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	js, html, css := read("app.js"), read("index.html"), read("style.css")
	for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "setAttribute(\"style\""} {
		if strings.Contains(js, bad) {
			t.Errorf("app.js uses %s", bad)
		}
	}
	if regexp.MustCompile(`<script>|<script [^>]*>[^<]`).MatchString(html) {
		t.Error("index.html has an inline script")
	}
	if strings.Contains(html, "<style") || strings.Contains(html, "style=") {
		t.Error("index.html has inline style")
	}
	for name, s := range map[string]string{"app.js": js, "index.html": html, "style.css": css} {
		if m := regexp.MustCompile(`(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/`).FindString(s); m != "" && !strings.Contains(m, "www.w3.org") {
			t.Errorf("%s refers to another host: %s", name, m)
		}
	}
}

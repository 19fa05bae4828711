// Package web is the coordinator's dashboard: one static page (HTML, CSS and
// plain JavaScript, embedded with go:embed, no build step, nothing from a
// CDN) that polls the cluster view (/api/v1/nodes) and the live statistics
// (/api/v1/stats) and draws them. It holds no state and must not import the
// coordinator: the page reaches the data over HTTP, with the API key the
// user gives it, exactly as any other client does.
package web

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
)

//go:embed static
var files embed.FS

// Handler serves the page at "/" and its assets under "/static/". Any other
// path is a 404. It is meant to be mounted at the root of the coordinator's
// API mux (coordinator.Config.Dashboard).
func Handler() http.Handler {
	static, err := fs.Sub(files, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	index, err := fs.ReadFile(static, "index.html")
	if err != nil {
		panic(err)
	}
	assets := http.StripPrefix("/static/", http.FileServerFS(static))
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		secure(w)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write(index)
	})
	mux.HandleFunc("GET /static/", func(w http.ResponseWriter, r *http.Request) {
		secure(w)
		if strings.HasSuffix(r.URL.Path, "/") { // no directory listings
			http.NotFound(w, r)
			return
		}
		assets.ServeHTTP(w, r)
	})
	return mux
}

// secure sets the headers that keep the page to its own origin: the scripts
// and styles are ours alone, data is fetched only from the coordinator, and
// the page may not be framed. The assets change with the binary, so the
// browser revalidates them instead of caching across upgrades.
func secure(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Cache-Control", "no-cache")
}

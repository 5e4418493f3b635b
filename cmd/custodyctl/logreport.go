package main

import (
	"bytes"
	"flag"
	"fmt"
	"html/template"
	"io"
	"os"
	"sort"
	"time"

	"custody/internal/auditlog"
)

// Chart colours (the report test looks for them in a screenshot).
const (
	colourAllowed = "#1f77b4"
	colourDenied  = "#d62728"
	colourOrder   = "#ff7f0e"
)

// Burst rule for the anomalies section: at least burstCount denials for
// one principal (or uid, for unknown callers) within burstWindow.
const (
	burstCount  = 5
	burstWindow = time.Minute
)

type bar struct {
	Label string
	Value int
	Extra int // second series (denied), stacked
}

type chart struct {
	Title  string
	Bars   []bar
	Colour string
	Second string // colour of Extra, "" if none
}

type burst struct {
	Who        string
	Start, End time.Time
	Count      int
	FirstIndex int64
	Codes      string
}

type reportData struct {
	Dir            string
	From, To       time.Time
	Generated      time.Time
	Total, Denied  int
	Failed, Audits int
	Verify         *auditlog.VerifyResult
	VerifyErr      string
	Charts         []chart
	Bursts         []burst
	Orders         []bar
}

func logReport(fs *flag.FlagSet, args []string, stdout io.Writer) error {
	var f filter
	from, to := f.flags(fs)
	out := fs.String("out", "", "the HTML file to write")
	key := fs.String("key", "", "your own copy of the log's public key; default: the key you pinned")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return usageError{err.Error()}
	}
	if len(pos) != 1 || *out == "" || *from == "" || *to == "" {
		return usageError{"usage: custodyctl log report DIR --from T --to T --out FILE.html"}
	}
	if f.from, err = parseTime(*from, false); err != nil {
		return err
	}
	if f.to, err = parseTime(*to, true); err != nil {
		return err
	}
	// A report says whether the log verifies, so it needs the reviewer's
	// key like verify does.
	v, err := reviewerKey("log report", *key, pos[0])
	if err != nil {
		return err
	}
	d := reportData{Dir: pos[0], From: f.from, To: f.to, Generated: time.Now().UTC()}
	if res, err := auditlog.Verify(pos[0], auditlog.VerifyOptions{Verifier: v, AllowUnsignedTail: true}); err != nil {
		d.VerifyErr = err.Error()
	} else {
		if dk := dirKeyMismatch(pos[0], v); dk != "" {
			res.OK = false
			res.Problems = append(res.Problems, auditlog.Problem{Index: res.TrustedUpTo, Kind: "key_replaced", Detail: dk})
		}
		d.Verify = res
	}
	purpose := map[string]*bar{}
	principal := map[string]*bar{}
	day := map[string]*bar{}
	orders := map[string]*bar{}
	type denial struct {
		t    time.Time
		i    int64
		code string
	}
	denials := map[string][]denial{}
	count := func(m map[string]*bar, k string, denied bool) {
		if k == "" {
			k = "(none)"
		}
		k = escapeText(k)
		b := m[k]
		if b == nil {
			b = &bar{Label: k}
			m[k] = b
		}
		if denied {
			b.Extra++
		} else {
			b.Value++
		}
	}
	err = auditlog.ReadEntries(pos[0], func(i int64, e auditlog.Entry) error {
		if !f.match(e) {
			return nil
		}
		d.Total++
		denied := e.Outcome == auditlog.Denied
		if denied {
			d.Denied++
			who := escapeText(e.Principal)
			if who == "" {
				who = fmt.Sprintf("uid %d", e.Caller.UID)
			}
			denials[who] = append(denials[who], denial{e.Time, i, escapeText(e.Code)})
		}
		if e.Outcome == auditlog.Failed {
			d.Failed++
		}
		count(purpose, e.Purpose, denied)
		count(principal, e.Principal, denied)
		count(day, e.Time.UTC().Format("2006-01-02"), denied)
		if e.CourtOrder != "" {
			d.Audits++
			count(orders, e.CourtOrder, denied)
		}
		return nil
	})
	if err != nil {
		return err
	}
	sorted := func(m map[string]*bar, byLabel bool) []bar {
		out := make([]bar, 0, len(m))
		for _, b := range m {
			out = append(out, *b)
		}
		sort.Slice(out, func(i, j int) bool {
			if byLabel {
				return out[i].Label < out[j].Label
			}
			if a, b := out[i].Value+out[i].Extra, out[j].Value+out[j].Extra; a != b {
				return a > b
			}
			return out[i].Label < out[j].Label
		})
		return out
	}
	d.Charts = []chart{
		{Title: "Accesses per day (allowed or failed / denied)", Bars: sorted(day, true), Colour: colourAllowed, Second: colourDenied},
		{Title: "Accesses per purpose", Bars: sorted(purpose, false), Colour: colourAllowed, Second: colourDenied},
		{Title: "Accesses per principal", Bars: sorted(principal, false), Colour: colourAllowed, Second: colourDenied},
	}
	d.Orders = sorted(orders, false)
	if len(d.Orders) > 0 {
		d.Charts = append(d.Charts, chart{Title: "Audit decrypts per court order", Bars: d.Orders, Colour: colourOrder, Second: colourDenied})
	}
	for who, ds := range denials {
		for i := 0; i < len(ds); {
			j := i
			for j+1 < len(ds) && ds[j+1].t.Sub(ds[i].t) <= burstWindow {
				j++
			}
			if j-i+1 >= burstCount {
				codes := map[string]bool{}
				var cs []string
				for _, x := range ds[i : j+1] {
					if !codes[x.code] {
						codes[x.code] = true
						cs = append(cs, x.code)
					}
				}
				sort.Strings(cs)
				d.Bursts = append(d.Bursts, burst{Who: who, Start: ds[i].t, End: ds[j].t, Count: j - i + 1, FirstIndex: ds[i].i, Codes: fmt.Sprint(cs)})
				i = j + 1
			} else {
				i++
			}
		}
	}
	sort.Slice(d.Bursts, func(i, j int) bool { return d.Bursts[i].FirstIndex < d.Bursts[j].FirstIndex })
	var buf bytes.Buffer
	if err := reportTemplate.Execute(&buf, d); err != nil {
		return err
	}
	if err := os.WriteFile(*out, buf.Bytes(), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: %d entries (%d denied, %d audit decrypts, %d denial bursts)\n", *out, d.Total, d.Denied, d.Audits, len(d.Bursts))
	return nil
}

// svgChart draws a horizontal bar chart; every label was escaped with
// escapeText when it was counted and is HTML-escaped here.
func svgChart(c chart) template.HTML {
	const w, labelW, barH, gap = 720, 200, 18, 6
	max := 1
	for _, b := range c.Bars {
		if v := b.Value + b.Extra; v > max {
			max = v
		}
	}
	h := len(c.Bars)*(barH+gap) + gap
	var buf bytes.Buffer
	fmt.Fprintf(&buf, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" role="img">`, w, h)
	scale := float64(w-labelW-60) / float64(max)
	for i, b := range c.Bars {
		y := gap + i*(barH+gap)
		w1 := int(float64(b.Value) * scale)
		w2 := int(float64(b.Extra) * scale)
		fmt.Fprintf(&buf, `<text x="%d" y="%d" text-anchor="end" font-size="12">%s</text>`, labelW-6, y+13, template.HTMLEscapeString(b.Label))
		fmt.Fprintf(&buf, `<rect x="%d" y="%d" width="%d" height="%d" fill="%s"/>`, labelW, y, w1, barH, c.Colour)
		if c.Second != "" && w2 > 0 {
			fmt.Fprintf(&buf, `<rect x="%d" y="%d" width="%d" height="%d" fill="%s"/>`, labelW+w1, y, w2, barH, c.Second)
		}
		fmt.Fprintf(&buf, `<text x="%d" y="%d" font-size="12">%d / %d</text>`, labelW+w1+w2+4, y+13, b.Value, b.Extra)
	}
	buf.WriteString(`</svg>`)
	return template.HTML(buf.String())
}

var reportTemplate = template.Must(template.New("report").Funcs(template.FuncMap{
	"chart": svgChart,
	"t":     func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"x":     escapeText,
}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>custody access log report {{t .From}} – {{t .To}}</title>
<style>
body{font-family:sans-serif;margin:2em;color:#222;background:#fff}
h1{font-size:1.4em} h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}
.ok{color:#2a7a2a;font-weight:bold} .bad{color:#b00;font-weight:bold}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
</style></head><body>
<h1>Access log report</h1>
<p>Log <code>{{x .Dir}}</code>, entries from {{t .From}} to {{t .To}} (generated {{t .Generated}}).</p>
{{with .Verify}}{{if .OK}}<p class="ok">Verified: {{.Entries}} entries, tree matches {{.Checkpoints}} signed checkpoints (latest signs {{.LatestSize}}).</p>
{{else}}<p class="bad">NOT VERIFIED: the log stops being trustworthy at entry {{.TrustedUpTo}}.</p><ul>{{range .Problems}}<li>entry {{.Index}} ({{.Kind}}): {{x .Detail}}</li>{{end}}</ul>{{end}}{{end}}
{{with .VerifyErr}}<p class="bad">Not verified: {{x .}}</p>{{end}}
<table><tr><th>entries in range</th><td>{{.Total}}</td></tr><tr><th>denied</th><td>{{.Denied}}</td></tr>
<tr><th>failed</th><td>{{.Failed}}</td></tr><tr><th>audit decrypts (court orders)</th><td>{{.Audits}}</td></tr></table>
<p class="legend"><span style="background:#1f77b4"></span>allowed or failed<span style="background:#d62728"></span>denied<span style="background:#ff7f0e"></span>audit decrypt</p>
{{range .Charts}}<h2>{{.Title}}</h2>{{if .Bars}}{{chart .}}{{else}}<p>none</p>{{end}}{{end}}
<h2>Audit decrypts per court order</h2>
{{if .Orders}}<table><tr><th>court order</th><th>allowed / failed</th><th>denied</th></tr>{{range .Orders}}<tr><td>{{.Label}}</td><td>{{.Value}}</td><td>{{.Extra}}</td></tr>{{end}}</table>{{else}}<p>none</p>{{end}}
<h2>Anomalies: denials in bursts (≥ 5 within a minute, per principal)</h2>
{{if .Bursts}}<table><tr><th>who</th><th>from</th><th>to</th><th>denials</th><th>first entry</th><th>codes</th></tr>
{{range .Bursts}}<tr><td>{{.Who}}</td><td>{{t .Start}}</td><td>{{t .End}}</td><td>{{.Count}}</td><td>{{.FirstIndex}}</td><td>{{.Codes}}</td></tr>{{end}}</table>{{else}}<p>none</p>{{end}}
</body></html>
`))

package main

import (
	"bytes"
	"flag"
	"fmt"
	"html/template"
	"io"
	"os"
	"time"

	"custody/internal/auditlog"
)

// Chart colours (the report test looks for them in a screenshot).
const (
	colourAllowed = "#1f77b4"
	colourDenied  = "#d62728"
	colourOrder   = "#ff7f0e"
)

// bar is an auditlog.Tally as the report shows it: Label escaped, Value
// the entries allowed or failed, Extra those denied.
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

// burst is an auditlog.Burst as the report shows it (Who, Log and Codes
// escaped; Log only in a fleet report).
type burst struct {
	Who        string
	Start, End time.Time
	Count      int
	Log        string
	FirstIndex int64
	Codes      string
}

// reportLog is one log of a fleet report: its name and directory
// (escaped when shown), its verification, and its entries in range.
type reportLog struct {
	Name, Dir string
	Verify    *auditlog.VerifyResult
	VerifyErr string
	Entries   int
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
	Fleet          []reportLog // several logs: one per log (Dir, Verify and VerifyErr then unused)
}

func logReport(fs *flag.FlagSet, stdout io.Writer) func(pos []string) error {
	var f filter
	from, to := f.flags(fs)
	out := fs.String("out", "", "the HTML `file` to write (required)")
	key := fs.String("key", "", "`file` with your own copy of the log's public key; default: the key you pinned")
	manifest := fs.String("fleet", "", "fleet manifest `file` listing log directories and their keys (docs/fleet.md)")
	return func(pos []string) error {
		var err error
		if len(pos) == 0 && *manifest == "" {
			return usageError{msg: "log report: missing argument: want DIR...", hint: "see custodyctl log report --help"}
		}
		if *out == "" || *from == "" || *to == "" {
			return flagsRequired("log report", "--from, --to and --out are required")
		}
		if (len(pos) > 1 || *manifest != "") && *key != "" {
			return usageError{msg: "log report: --key takes one DIR; pin each log's key or list the keys in a --fleet manifest to report on several"}
		}
		if f.from, err = parseTime(*from, false); err != nil {
			return err
		}
		if f.to, err = parseTime(*to, true); err != nil {
			return err
		}
		// A report says whether the log verifies, so it needs the reviewer's
		// key like verify does.
		var srcs []logSource
		if len(pos) == 1 && *manifest == "" {
			v, err := reviewerKey("log report", *key, pos[0])
			if err != nil {
				return err
			}
			srcs = []logSource{{name: v.Name(), dir: pos[0], key: v}}
		} else if srcs, err = logSources("log report", pos, *manifest); err != nil {
			return err
		}
		d := reportData{Dir: srcs[0].dir, From: f.from, To: f.to, Generated: time.Now().UTC()}
		var dirs []string
		for _, src := range srcs {
			l := reportLog{Name: src.name, Dir: src.dir}
			if res, err := verifySource(src, true); err != nil {
				l.VerifyErr = err.Error()
			} else {
				l.Verify = res
			}
			d.Fleet = append(d.Fleet, l)
			dirs = append(dirs, src.dir)
		}
		if len(srcs) == 1 {
			d.Verify, d.VerifyErr, d.Fleet = d.Fleet[0].Verify, d.Fleet[0].VerifyErr, nil
		}
		// The window is f.from..f.to; f.match applies it again along with the
		// other filters (--principal, --purpose, …) report accepts like query.
		sum, err := auditlog.SummarizeLogs(dirs, auditlog.SummaryOptions{From: f.from, To: f.to, Match: f.match})
		if err != nil {
			return err
		}
		for i := range d.Fleet {
			d.Fleet[i].Entries = sum.Logs[i]
		}
		d.Total, d.Denied, d.Failed, d.Audits = sum.Entries, sum.Denied, sum.Failed, sum.Audits
		d.Charts = []chart{
			{Title: "Accesses per day (allowed or failed / denied)", Bars: bars(sum.Days), Colour: colourAllowed, Second: colourDenied},
			{Title: "Accesses per purpose", Bars: bars(sum.Purposes), Colour: colourAllowed, Second: colourDenied},
			{Title: "Accesses per principal", Bars: bars(sum.Principals), Colour: colourAllowed, Second: colourDenied},
		}
		d.Orders = bars(sum.Orders)
		if len(d.Orders) > 0 {
			d.Charts = append(d.Charts, chart{Title: "Audit decrypts per court order", Bars: d.Orders, Colour: colourOrder, Second: colourDenied})
		}
		for _, b := range sum.Bursts {
			who := escapeText(b.Principal)
			if b.Principal == "" {
				who = fmt.Sprintf("uid %d", b.UID)
			}
			codes := make([]string, len(b.Codes))
			for i, c := range b.Codes {
				codes[i] = escapeText(c)
			}
			var log string
			if d.Fleet != nil {
				log = escapeText(srcs[b.Log].name)
			}
			d.Bursts = append(d.Bursts, burst{Who: who, Start: b.Start, End: b.End, Count: b.Count, Log: log, FirstIndex: b.FirstIndex, Codes: fmt.Sprint(codes)})
		}
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

}

// bars converts tallies, in their order, to bars: every key escaped with
// escapeText, "" shown as "(none)".
func bars(ts []auditlog.Tally) []bar {
	out := make([]bar, len(ts))
	for i, t := range ts {
		label := "(none)"
		if t.Key != "" {
			label = escapeText(t.Key)
		}
		out[i] = bar{Label: label, Value: t.Allowed + t.Failed, Extra: t.Denied}
	}
	return out
}

// svgChart draws a horizontal bar chart; every label was escaped with
// escapeText by bars and is HTML-escaped here.
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
{{if .Fleet}}<p>{{len .Fleet}} logs of a fleet counted together, entries from {{t .From}} to {{t .To}} (generated {{t .Generated}}).</p>
<table><tr><th>log</th><th>directory</th><th>entries in range</th><th>verification</th></tr>
{{range .Fleet}}<tr><td>{{x .Name}}</td><td><code>{{x .Dir}}</code></td><td>{{.Entries}}</td><td>{{with .Verify}}{{if .OK}}<span class="ok">verified: {{.Entries}} entries, {{.Checkpoints}} signed checkpoints (latest signs {{.LatestSize}})</span>{{else}}<span class="bad">NOT VERIFIED from entry {{.TrustedUpTo}}</span><ul>{{range .Problems}}<li>entry {{.Index}} ({{.Kind}}): {{x .Detail}}</li>{{end}}</ul>{{end}}{{end}}{{with .VerifyErr}}<span class="bad">not verified: {{x .}}</span>{{end}}</td></tr>
{{end}}</table>
{{else}}<p>Log <code>{{x .Dir}}</code>, entries from {{t .From}} to {{t .To}} (generated {{t .Generated}}).</p>{{end}}
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
{{range .Bursts}}<tr><td>{{.Who}}</td><td>{{t .Start}}</td><td>{{t .End}}</td><td>{{.Count}}</td><td>{{with .Log}}{{.}} {{end}}{{.FirstIndex}}</td><td>{{.Codes}}</td></tr>{{end}}</table>{{else}}<p>none</p>{{end}}
</body></html>
`))

// Command loadgen drives a Segment-compatible collector with realistic events over
// keep-alive HTTP/1.1 connections and prints one JSON object of figures on stdout.
//
// Every event carries a unique messageId, so a collector that deduplicates does the
// same work as it would in production. Bodies are pre-generated; per request only the
// fixed-width messageId bytes are rewritten in place, which keeps the client cheap
// enough not to become the bottleneck on a small machine.
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

const (
	idLen       = 36 // len("xxxxxxxx-xxxx-4xxx-8xxx-xxxxxxxxxxxx")
	idMarker    = "@@MSGID-PLACEHOLDER-@@@@@@@@@@@@@@@@"
	nTemplates  = 64
	urlTrack    = "/v1/track"
	urlBatch    = "/v1/batch"
	idleTimeout = 90 * time.Second
)

type template struct {
	body    []byte
	offsets []int // where each event's messageId starts
}

type result struct {
	Path         string         `json:"path"`
	Concurrency  int            `json:"concurrency"`
	EventsPerReq int            `json:"events_per_request"`
	BodyBytes    int            `json:"body_bytes"`
	DurationS    float64        `json:"duration_s"`
	Requests     int64          `json:"requests"`
	OK           int64          `json:"ok"`
	AckedEvents  int64          `json:"acked_events"` // 200s including warm-up, times events
	NonOK        int64          `json:"non_ok"`
	Statuses     map[string]int `json:"statuses"`
	Errors       int64          `json:"errors"`
	FirstError   string         `json:"first_error,omitempty"`
	RPS          float64        `json:"requests_per_s"`
	EPS          float64        `json:"events_per_s"`
	P50Ms        float64        `json:"p50_ms"`
	P99Ms        float64        `json:"p99_ms"`
	MaxMs        float64        `json:"max_ms"`
}

type worker struct {
	latencies []time.Duration // of 200 responses inside the measured window
	statuses  map[int]int
	ok, nonOK int64
	okAll     int64 // 200s including warm-up
	errors    int64
	firstErr  string
}

func main() {
	base := flag.String("url", "http://127.0.0.1:8088", "collector base URL")
	key := flag.String("key", "BENCHKEY", "write key (HTTP Basic user, empty password)")
	conc := flag.Int("c", 16, "concurrent connections, one request in flight on each")
	dur := flag.Duration("d", 10*time.Second, "measured duration")
	warm := flag.Duration("warmup", time.Second, "unmeasured warm-up before the measured window")
	events := flag.Int("events", 100, "events per request: 1 posts to /v1/track, more to /v1/batch")
	flag.Parse()
	if *events < 1 || *conc < 1 {
		fmt.Fprintln(os.Stderr, "loadgen: -events and -c must be >= 1")
		os.Exit(2)
	}

	path := urlBatch
	if *events == 1 {
		path = urlTrack
	}
	target := *base + path
	auth := "Basic " + base64.StdEncoding.EncodeToString([]byte(*key+":"))
	templates := makeTemplates(*events)

	transport := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        *conc,
		MaxIdleConnsPerHost: *conc,
		MaxConnsPerHost:     *conc,
		IdleConnTimeout:     idleTimeout,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
	client := &http.Client{Transport: transport, Timeout: 30 * time.Second}

	var prefix [4]byte
	_, _ = rand.Read(prefix[:])
	var seq atomic.Uint64

	start := time.Now()
	measureFrom := start.Add(*warm)
	stopAt := measureFrom.Add(*dur)
	workers := make([]*worker, *conc)
	var wg sync.WaitGroup
	for i := range workers {
		w := &worker{statuses: map[int]int{}}
		workers[i] = w
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			buf := make([]byte, 0, len(templates[0].body)*2)
			for n := i; ; n++ {
				now := time.Now()
				if !now.Before(stopAt) {
					return
				}
				t := &templates[n%len(templates)]
				buf = append(buf[:0], t.body...)
				for _, off := range t.offsets {
					writeID(buf[off:off+idLen], prefix, seq.Add(1))
				}
				req, _ := http.NewRequest(http.MethodPost, target, bytes.NewReader(buf))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Authorization", auth)
				sent := time.Now()
				resp, err := client.Do(req)
				measured := !sent.Before(measureFrom)
				if err != nil {
					if measured {
						w.errors++
						if w.firstErr == "" {
							w.firstErr = err.Error()
						}
					}
					time.Sleep(10 * time.Millisecond)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				took := time.Since(sent)
				if resp.StatusCode == http.StatusOK {
					w.okAll++
				}
				if !measured {
					continue
				}
				w.statuses[resp.StatusCode]++
				if resp.StatusCode == http.StatusOK {
					w.ok++
					w.latencies = append(w.latencies, took)
				} else {
					w.nonOK++
				}
			}
		}(i)
	}
	wg.Wait()
	elapsed := time.Since(measureFrom).Seconds()

	res := result{
		Path: path, Concurrency: *conc, EventsPerReq: *events,
		BodyBytes: len(templates[0].body), DurationS: elapsed, Statuses: map[string]int{},
	}
	var lat []time.Duration
	for _, w := range workers {
		res.OK += w.ok
		res.AckedEvents += w.okAll * int64(*events)
		res.NonOK += w.nonOK
		res.Errors += w.errors
		if res.FirstError == "" {
			res.FirstError = w.firstErr
		}
		for code, n := range w.statuses {
			res.Statuses[strconv.Itoa(code)] += n
		}
		lat = append(lat, w.latencies...)
	}
	res.Requests = res.OK + res.NonOK + res.Errors
	res.RPS = float64(res.OK) / elapsed
	res.EPS = res.RPS * float64(*events)
	sort.Slice(lat, func(a, b int) bool { return lat[a] < lat[b] })
	res.P50Ms = quantileMs(lat, 0.50)
	res.P99Ms = quantileMs(lat, 0.99)
	if len(lat) > 0 {
		res.MaxMs = ms(lat[len(lat)-1])
	}
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
}

func quantileMs(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q * float64(len(sorted)-1))
	return ms(sorted[i])
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// writeID writes a UUID-v4-shaped id, unique for this run: 4 random bytes, then seq.
func writeID(dst []byte, prefix [4]byte, seq uint64) {
	var raw [16]byte
	copy(raw[:4], prefix[:])
	for i := 15; i >= 4; i-- {
		raw[i] = byte(seq)
		seq >>= 8
	}
	raw[6] = (raw[6] & 0x0f) | 0x40
	raw[8] = (raw[8] & 0x3f) | 0x80
	hex.Encode(dst[0:8], raw[0:4])
	dst[8] = '-'
	hex.Encode(dst[9:13], raw[4:6])
	dst[13] = '-'
	hex.Encode(dst[14:18], raw[6:8])
	dst[18] = '-'
	hex.Encode(dst[19:23], raw[8:10])
	dst[23] = '-'
	hex.Encode(dst[24:36], raw[10:16])
}

var (
	products   = []string{"Shoes", "Jacket", "Backpack", "Headphones", "Water Bottle", "Sunglasses"}
	categories = []string{"Apparel", "Outdoor", "Electronics", "Accessories"}
	pages      = []string{"/", "/products", "/products/shoes", "/cart", "/search"}
	locales    = []string{"en-US", "de-DE", "fr-FR", "ja-JP"}
)

func event(rng *uint64, ts string) map[string]any {
	r := func(n int) int {
		*rng = *rng*6364136223846793005 + 1442695040888963407
		return int((*rng >> 33) % uint64(n))
	}
	product := r(len(products))
	return map[string]any{
		"type":        "track",
		"event":       "Product Viewed",
		"userId":      fmt.Sprintf("user-%06d", r(100000)),
		"anonymousId": fmt.Sprintf("anon-%08x-%04x", r(1<<31), r(1<<16)),
		"properties": map[string]any{
			"product_id": fmt.Sprintf("sku-%05d", r(50000)),
			"name":       products[product],
			"category":   categories[r(len(categories))],
			"price":      float64(r(20000)) / 100,
			"currency":   "USD",
			"position":   r(24) + 1,
			"in_stock":   r(10) > 0,
		},
		"context": map[string]any{
			"ip":        fmt.Sprintf("203.0.113.%d", r(254)+1),
			"locale":    locales[r(len(locales))],
			"userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
			"page": map[string]any{
				"path":     pages[r(len(pages))],
				"referrer": "https://www.example.com/",
				"title":    "Example Store",
				"url":      "https://shop.example.com" + pages[r(len(pages))],
			},
			"library": map[string]any{"name": "analytics.js", "version": "5.2.0"},
		},
		"timestamp": ts,
		"messageId": idMarker,
	}
}

func makeTemplates(events int) []template {
	now := time.Now().UTC()
	sentAt := now.Format("2006-01-02T15:04:05.000Z")
	rng := uint64(42)
	marker := []byte(idMarker)
	out := make([]template, nTemplates)
	for i := range out {
		var body []byte
		if events == 1 {
			ev := event(&rng, now.Add(-50*time.Millisecond).Format("2006-01-02T15:04:05.000Z"))
			delete(ev, "type")
			ev["sentAt"] = sentAt
			body, _ = json.Marshal(ev)
		} else {
			batch := make([]map[string]any, events)
			for j := range batch {
				ts := now.Add(-time.Duration(events-j) * 100 * time.Millisecond)
				batch[j] = event(&rng, ts.Format("2006-01-02T15:04:05.000Z"))
			}
			body, _ = json.Marshal(map[string]any{"batch": batch, "sentAt": sentAt})
		}
		t := template{body: body}
		for from := 0; ; {
			k := bytes.Index(body[from:], marker)
			if k < 0 {
				break
			}
			t.offsets = append(t.offsets, from+k)
			from += k + idLen
		}
		out[i] = t
	}
	return out
}

package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	ucli "github.com/urfave/cli/v2"

	"github.com/zimage/zimage"
	"github.com/zimage/zimage/server"
)

func serveCommand() *ucli.Command {
	return &ucli.Command{
		Name:      "serve",
		Usage:     "web UI and AUTOMATIC1111-compatible HTTP API (default http://127.0.0.1:7860)",
		ArgsUsage: " ",
		Description: `Open the printed address in a browser, or point any AUTOMATIC1111 client at it.
   --listen binds all interfaces so other machines on the LAN can use it; add --api-auth then.`,
		Flags: append([]ucli.Flag{
			&ucli.StringFlag{Name: "model", Aliases: []string{"m"}, Usage: "diffusers model folder or single-file .safetensors checkpoint to load first"},
			&ucli.StringFlag{Name: "models-dir", Usage: "folder of models (diffusers folders, .safetensors files): one is loaded at a time, switched on request"},
			&ucli.StringFlag{Name: "host", Value: "127.0.0.1", Usage: "address to bind"},
			&ucli.IntFlag{Name: "port", Value: 7860, Usage: "port to bind (0 picks a free one)"},
			&ucli.BoolFlag{Name: "listen", Usage: "bind 0.0.0.0 (all interfaces) and print the LAN address"},
			&ucli.StringFlag{Name: "api-auth", Usage: "HTTP basic auth for the UI and the API: user:pass[,user2:pass2]", EnvVars: []string{"ZIMAGE_API_AUTH"}},
			&ucli.StringFlag{Name: "outputs", Value: "outputs", Usage: "folder for saved images (A1111 layout: txt2img-images/YYYY-MM-DD/)"},
			&ucli.IntFlag{Name: "queue", Value: 16, Usage: "jobs that may wait; more are refused with 503 and Retry-After"},
			&ucli.StringFlag{Name: "cors-allow-origins", Usage: "comma-separated origins (https://app.example) allowed to call the API from a browser, or *"},
			&ucli.IntFlag{Name: "max-side", Value: 2048, Usage: "largest width or height a request may ask for"},
			&ucli.BoolFlag{Name: "preview", Usage: "live previews: a TAESD picture after every step in the UI and /sdapi/v1/progress's current_image (A1111's live_previews_enable; needs --taesd or a taesd folder in the model folder)"},
			&ucli.StringFlag{Name: "taesd", Usage: "tiny decoder for live previews (a taesd, taesdxl or taef1 folder, or taesd*_decoder.safetensors); it must fit every model served"},
		}, append(deviceFlags(), loraFlags()...)...),
		Action: runServe,
	}
}

func runServe(c *ucli.Context) error {
	if c.Args().Len() > 0 {
		return usagef("serve: unexpected argument %q", c.Args().First())
	}
	cfg, addr, err := serveConfig(c)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(c.App.ErrWriter, nil))
	cfg.Logger = log
	srv, err := server.New(cfg)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	host := c.String("host")
	if c.Bool("listen") {
		host = "0.0.0.0"
	}
	local := "127.0.0.1"
	if host != "0.0.0.0" && host != "::" {
		local = host
	}
	log.Info("listening on http://" + net.JoinHostPort(local, strconv.Itoa(port)))
	if c.Bool("listen") {
		for _, ip := range lanAddresses() {
			log.Info("on the LAN: http://" + net.JoinHostPort(ip, strconv.Itoa(port)))
		}
		if len(cfg.Auth) == 0 {
			log.Warn("listening on all interfaces without --api-auth: anyone on the network can use this server and read its images")
		}
	}
	ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
	defer stop()
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	serveErr := make(chan error, 1)
	go func() { serveErr <- hs.Serve(ln) }()
	runErr := make(chan error, 1)
	go func() { runErr <- srv.Run(ctx) }()
	var failure error
	select {
	case <-ctx.Done():
		log.Info("shutting down: no new jobs, stopping the running one")
	case err := <-serveErr:
		failure = fmt.Errorf("serve: %w", err)
		stop()
	}
	// The worker interrupts the running job and answers the waiting ones;
	// then the HTTP side finishes sending those answers.
	err = <-runErr
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if serr := hs.Shutdown(sctx); serr != nil && failure == nil && !errors.Is(serr, http.ErrServerClosed) {
		log.Warn("http shutdown", "err", serr)
	}
	if failure != nil {
		return failure
	}
	if err != nil {
		log.Error("closing the model", "err", err)
	}
	log.Info("stopped")
	return nil
}

// serveConfig validates the flags before anything opens.
func serveConfig(c *ucli.Context) (server.Config, string, error) {
	var cfg server.Config
	cfg.Model, cfg.ModelsDir = c.String("model"), c.String("models-dir")
	if cfg.Model == "" && cfg.ModelsDir == "" {
		return cfg, "", usagef("serve: want --model (-m) or --models-dir")
	}
	if cfg.Model != "" {
		if _, err := os.Stat(cfg.Model); err != nil {
			return cfg, "", usagef("--model: %v", err)
		}
	}
	if cfg.ModelsDir != "" {
		if st, err := os.Stat(cfg.ModelsDir); err != nil || !st.IsDir() {
			return cfg, "", usagef("--models-dir %s: not a folder", cfg.ModelsDir)
		}
	}
	if p := c.Int("port"); p < 0 || p > 65535 {
		return cfg, "", usagef("--port %d: want 0 to 65535", p)
	}
	if q := c.Int("queue"); q < 1 || q > 10000 {
		return cfg, "", usagef("--queue %d: want 1 to 10000", q)
	}
	if m := c.Int("max-side"); m < server.MinSide || m > 8192 || m%8 != 0 {
		return cfg, "", usagef("--max-side %d: want a multiple of 8 from %d to 8192", m, server.MinSide)
	}
	if a := c.String("api-auth"); a != "" {
		auth, err := server.ParseAuth(a)
		if err != nil {
			return cfg, "", usagef("--api-auth: want user:password[,user2:password2]")
		}
		cfg.Auth = auth
	}
	if o := c.String("cors-allow-origins"); o != "" {
		for _, origin := range strings.Split(o, ",") {
			origin = strings.TrimSpace(origin)
			if origin == "*" {
				cfg.CORSOrigins = append(cfg.CORSOrigins, origin)
				continue
			}
			u, err := url.Parse(origin)
			if err != nil || u.Scheme == "" || u.Host == "" || (u.Path != "" && u.Path != "/") {
				return cfg, "", usagef("--cors-allow-origins %q: want scheme://host[:port] (such as https://app.example) or *", origin)
			}
			cfg.CORSOrigins = append(cfg.CORSOrigins, u.Scheme+"://"+u.Host)
		}
	}
	dev, err := deviceFromFlags(c)
	if err != nil {
		return cfg, "", err
	}
	cfg.VAETiling, cfg.Tile = dev.tiling, dev.tile
	ls, err := loraFromFlags(c)
	if err != nil {
		return cfg, "", err
	}
	cfg.LoRADir = ls.dir
	loadOpts := slices.Concat(dev.opts, ls.opts)
	if t := c.String("taesd"); t != "" {
		if _, err := os.Stat(t); err != nil {
			return cfg, "", usagef("--taesd: %v", err)
		}
		loadOpts = append(loadOpts, zimage.WithTAESD(t))
	}
	cfg.Previews = c.Bool("preview")
	cfg.Load = func(path string) (server.Model, error) {
		p, err := zimage.Load(path, loadOpts...)
		if err != nil {
			return nil, err
		}
		return p, nil
	}
	cfg.Hash = func(path string) string { return zimage.ModelHash(path, dev.opts...) }
	cfg.Outputs, cfg.Queue, cfg.MaxSide = c.String("outputs"), c.Int("queue"), c.Int("max-side")
	host := c.String("host")
	if c.Bool("listen") {
		host = "0.0.0.0"
	}
	cfg.Flags = map[string]any{
		"ckpt": cfg.Model, "ckpt_dir": cfg.ModelsDir, "listen": c.Bool("listen"), "server_name": host,
		"port": c.Int("port"), "api": true, "nowebui": false, "api_auth": nil, "outdir_samples": cfg.Outputs,
		"queue": cfg.Queue, "cors_allow_origins": c.String("cors-allow-origins"), "vram": c.String("vram"),
		"offload": c.String("offload"), "device": c.String("device"), "vae_tiling": c.String("vae-tiling"),
		"max_side": cfg.MaxSide, "lora_dir": cfg.LoRADir, "lora_ignore_unknown": c.Bool("lora-ignore-unknown"),
		"lora_mode": c.String("lora-mode"), "live_previews": cfg.Previews, "taesd": c.String("taesd"),
	}
	if len(cfg.Auth) > 0 {
		cfg.Flags["api_auth"] = "(set)" // never the secret itself
	}
	return cfg, net.JoinHostPort(host, strconv.Itoa(c.Int("port"))), nil
}

// lanAddresses are this machine's non-loopback IPv4 addresses.
func lanAddresses() []string {
	var out []string
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
			out = append(out, n.IP.String())
		}
	}
	return out
}

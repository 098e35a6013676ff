// Binary nfsd serves each node's root filesystem over NFSv3, with MOUNT v3
// and a portmapper for the clients that ask one.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/ociboot/ociboot/appliance/budget"
	"github.com/ociboot/ociboot/appliance/nfs"
	"github.com/ociboot/ociboot/appliance/nfs/nfscheck"
	"github.com/ociboot/ociboot/appliance/nodedisk"
	"github.com/ociboot/ociboot/appliance/nodes"
	"github.com/ociboot/ociboot/appliance/service"
)

var (
	nfsAddr     = flag.String("nfs_addr", ":2049", "address for NFSv3 and MOUNT v3 (TCP; MOUNT also on UDP)")
	portmapAddr = flag.String("portmap_addr", ":111", "address for the portmapper (TCP and UDP; empty: none)")
	reserveMiB  = flag.Int64("reserve_mib", budget.DefaultReserve>>20, "MiB of free space on the store that node writes never take (they fail with \"No space left on device\" below it), kept for the head node's own state: leases, node records, image index")
	insecure    = flag.Bool("insecure_ports", false, "serve NFS and MOUNT calls from source ports 1024 and above (knfsd's \"insecure\"); by default only root on a client can reach the nodes' roots")
	replyLog    = flag.String("reply_log", "", "debugging: append every call's header and its reply to this file, for nfscheck.CheckLog (tests use it; it slows nfsd down)")
)

func main() {
	service.Main("nfsd", ":9049", func(ctx context.Context, env *service.Env) error {
		if *reserveMiB < 0 {
			return fmt.Errorf("nfsd: -reserve_mib %d: want 0 (no reserve) or more", *reserveMiB)
		}
		var onReply func(call, reply []byte)
		if *replyLog != "" {
			f, err := os.OpenFile(*replyLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
			if err != nil {
				return fmt.Errorf("nfsd: -reply_log: %v", err)
			}
			defer f.Close()
			l := nfscheck.NewLog(f)
			var once sync.Once
			onReply = func(call, reply []byte) {
				if err := l.Record(call, reply); err != nil {
					once.Do(func() { env.Log.Error("reply log: no more replies recorded", "file", *replyLog, "err", err) })
				}
			}
		}
		srv, err := nfs.New(nfs.Options{
			OnReply:       onReply,
			InsecurePorts: *insecure,
			Store:         env.Store,
			Resolver:      nfs.NodeResolver{Config: env.Config, Store: env.Store},
			Log:           env.Log,
			Metrics:       env.Metrics,
			Reserve:       *reserveMiB << 20,
			Quota:         nfs.NodeResolver{Config: env.Config, Store: env.Store}.Quota,
			Disks:         nodedisk.Disks{Config: env.Config, Store: env.Store},
			Personalize: func(key, root string) error {
				return nodes.Personalize(env.Config, env.Store, key, root)
			},
			OnMount: func(key string, client netip.Addr) {
				err := nodes.SaveStage(env.Store, key, "nfsd", nodes.Stage{Stage: nodes.StageRoot, Time: time.Now().UTC(), Detail: "mounted by " + client.String()})
				if err != nil {
					env.Log.Warn("recording stage", "node", key, "err", err)
				}
			},
		})
		if err != nil {
			return err
		}
		defer srv.Close()
		env.SetStatus(func() any {
			return struct {
				nfs.Status
				Activity []nfs.Activity
			}{srv.Status(), srv.Activities()}
		})
		// Both need the password (service.Env's guard). A node whose
		// root is in use, or whose NBD disk nbdd serves, is refused
		// unless force=1.
		admin := func(what string, act func(key string, force bool) error, done string) {
			env.Mux.HandleFunc("POST /"+what, func(w http.ResponseWriter, r *http.Request) {
				node := r.FormValue("node")
				err := act(node, r.FormValue("force") == "1")
				switch {
				case errors.Is(err, nfs.ErrUnknownNode):
					http.Error(w, err.Error(), http.StatusNotFound)
				case errors.Is(err, nfs.ErrMounted), errors.Is(err, nodedisk.ErrInUse):
					http.Error(w, err.Error(), http.StatusConflict)
				case err != nil:
					http.Error(w, err.Error(), http.StatusBadRequest)
				default:
					env.Log.Info(what, "node", node, "from", r.RemoteAddr)
					fmt.Fprintf(w, "node %s: %s\n", node, done)
				}
			})
		}
		admin("reset", func(k string, f bool) error { return srv.ResetNode(env.Config, k, f) }, "root dropped (and its NBD disk unless KeepOnReset); its next mount makes a fresh one from its image")
		admin("forget", func(k string, f bool) error { return srv.Forget(env.Config, k, f) }, "forgotten; if it boots again it is enrolled afresh")
		errc := make(chan error, 4)
		var closers []func() error
		defer func() {
			for _, c := range closers {
				c()
			}
		}()
		serve := func(addr, what string, progs []nfs.Program) error {
			ln, err := service.Listen("tcp", addr)
			if err != nil {
				return fmt.Errorf("nfsd: listen on TCP %s for %s: %v; is another NFS server or rpcbind running? (set -%s)", addr, what, err, map[string]string{"NFS": "nfs_addr", "portmap": "portmap_addr"}[what])
			}
			closers = append(closers, ln.Close)
			port := ln.Addr().(*net.TCPAddr).Port
			go func() { errc <- srv.ServeTCP(ln) }()
			pc, err := service.ListenPacket("udp", net.JoinHostPort(host(addr), strconv.Itoa(port)))
			if err != nil {
				return fmt.Errorf("nfsd: listen on UDP %s for %s: %v", addr, what, err)
			}
			closers = append(closers, pc.Close)
			go func() { errc <- srv.ServeUDP(pc) }()
			for _, p := range progs {
				for _, v := range p.Versions {
					srv.SetPort(p.Number, v, "tcp", port)
					if p.UDP {
						srv.SetPort(p.Number, v, "udp", port)
					}
				}
			}
			env.Log.Info("nfs listening", "what", what, "addr", ln.Addr().String())
			return nil
		}
		if err := serve(*nfsAddr, "NFS", nfs.NFSPrograms); err != nil {
			return err
		}
		if *portmapAddr != "" {
			if err := serve(*portmapAddr, "portmap", nfs.PortmapPrograms); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errc:
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("nfsd: %v", err)
		}
	})
}

func host(addr string) string {
	h, _, _ := net.SplitHostPort(addr)
	return h
}

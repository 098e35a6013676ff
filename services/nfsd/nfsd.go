// Binary nfsd serves each node's root filesystem over NFSv3.
package main

import (
	"context"

	"github.com/ociboot/ociboot/appliance/service"
)

func main() {
	service.Main("nfsd", ":9049", func(ctx context.Context, env *service.Env) error {
		env.SetStatus(func() any {
			return map[string]any{"service": "nfsd", "mode": env.Config.Mode, "interface": env.Config.Interface}
		})
		<-ctx.Done()
		return ctx.Err()
	})
}

/// <reference types="vitest/config" />
import { gzipSync } from "node:zlib";
import tailwindcss from "@tailwindcss/vite";
import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";
import type { Plugin } from "vite";
import { ORT_WASM_FILE } from "./src/device/fetchFile";

/** ONNX Runtime Web's WASM (14 MB) emitted gzip-compressed (3.7 MB) as `ORT_WASM_FILE`, in
 * place of the plain file: the page decompresses it and hands it to ONNX Runtime (fetchFile.ts,
 * deviceCaptioner.ts), which keeps the exported static site small. */
function gzipOrtWasm(): Plugin {
  return {
    name: "captioner:gzip-ort-wasm",
    apply: "build",
    generateBundle(_, bundle) {
      const wasm = Object.values(bundle).filter((file) => file.fileName.endsWith(".wasm"));
      if (wasm.length !== 1 || wasm[0].type !== "asset") {
        this.error(`expected one WASM file (ONNX Runtime's) in the build, found ${wasm.length}`);
      }
      const [asset] = wasm;
      delete bundle[asset.fileName];
      this.emitFile({ type: "asset", fileName: ORT_WASM_FILE, source: gzipSync(asset.source, { level: 9 }) });
    },
  };
}

export default defineConfig({
  plugins: [react(), tailwindcss(), gzipOrtWasm()],
  // Relative asset paths: the exported site (`captioner export --web`) works from any folder
  // of any static file server.
  base: "./",
  // `npm run dev` talks to a `captioner serve` running on the default port.
  server: { proxy: { "/api": "http://127.0.0.1:8000" } },
  test: {
    environment: "jsdom",
    globals: true,
    setupFiles: ["./src/test-setup.ts"],
    include: ["src/**/*.test.{ts,tsx}"],
  },
});

// ESLint (flat config) for the page's sources: `npm run lint` (also part of `make lint`).
// The recommended JS and TypeScript rules (not type-aware) and the React hooks rules.
import js from "@eslint/js";
import reactHooks from "eslint-plugin-react-hooks";
import tseslint from "typescript-eslint";

export default tseslint.config(
  { ignores: ["dist", "site", "node_modules"] },
  {
    files: ["src/**/*.{ts,tsx}"],
    extends: [js.configs.recommended, tseslint.configs.recommended],
    plugins: { "react-hooks": reactHooks },
    rules: {
      // The classic hooks rules. The plugin's v7 `recommended` preset adds the React Compiler
      // rules (set-state-in-effect, refs, ...), which this code does not follow yet.
      "react-hooks/rules-of-hooks": "error",
      "react-hooks/exhaustive-deps": "error",
      // As tsc's noUnusedParameters: a leading underscore marks a parameter kept for its type
      // (the call signature of a mock); `{ a: _, ...rest }` drops a key.
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", ignoreRestSiblings: true }],
    },
  },
);

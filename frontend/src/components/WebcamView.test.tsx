import { render, screen } from "@testing-library/react";
import WebcamView from "./WebcamView";

afterEach(() => vi.unstubAllGlobals());

function withCamera(getUserMedia: () => Promise<MediaStream>) {
  vi.stubGlobal("navigator", { ...navigator, mediaDevices: { getUserMedia } });
}

test("a refused permission says how to allow it", async () => {
  withCamera(() => Promise.reject(new DOMException("denied", "NotAllowedError")));
  render(<WebcamView onFrame={vi.fn()} busy={false} />);
  expect(await screen.findByRole("alert")).toHaveTextContent("Camera permission was refused");
});

test("until the video plays, capture and live mode are disabled", () => {
  withCamera(() => new Promise(() => {}));
  render(<WebcamView onFrame={vi.fn()} busy={false} />);
  expect(screen.getByRole("button", { name: "Capture frame" })).toBeDisabled();
  expect(screen.getByRole("switch", { name: /Live: caption every 2 seconds/ })).toBeDisabled();
  expect(screen.getByText("Starting the camera…")).toBeInTheDocument();
});

test("captioning on the device, live mode goes frame after frame", () => {
  withCamera(() => new Promise(() => {}));
  render(<WebcamView onFrame={vi.fn()} busy={false} intervalMs={0} />);
  expect(screen.getByRole("switch", { name: "Live: caption frame after frame" })).toBeDisabled();
});

import { useEffect, useRef, useState } from "react";

function firstImage(files: FileList | null | undefined): File | null {
  return Array.from(files ?? []).find((f) => f.type.startsWith("image/")) ?? files?.[0] ?? null;
}

/** Files dropped anywhere on the page or pasted from the clipboard go to `onFile`; `dragging`
 * says whether a file is being dragged over the page (to show the drop target). */
export function useImageInput(onFile: (file: File) => void): { dragging: boolean } {
  const [dragging, setDragging] = useState(false);
  const depth = useRef(0); // dragenter/dragleave fire for every child element crossed
  const callback = useRef(onFile);
  callback.current = onFile;

  useEffect(() => {
    const hasFiles = (e: DragEvent) => e.dataTransfer?.types.includes("Files") ?? false;
    const enter = (e: DragEvent) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      depth.current += 1;
      setDragging(true);
    };
    const over = (e: DragEvent) => {
      if (hasFiles(e)) e.preventDefault(); // allows the drop
    };
    const leave = () => {
      depth.current = Math.max(0, depth.current - 1);
      if (depth.current === 0) setDragging(false);
    };
    const drop = (e: DragEvent) => {
      depth.current = 0;
      setDragging(false);
      const file = firstImage(e.dataTransfer?.files);
      if (!file) return;
      e.preventDefault();
      callback.current(file);
    };
    const paste = (e: ClipboardEvent) => {
      const file = firstImage(e.clipboardData?.files);
      if (!file) return;
      e.preventDefault();
      callback.current(file);
    };
    window.addEventListener("dragenter", enter);
    window.addEventListener("dragover", over);
    window.addEventListener("dragleave", leave);
    window.addEventListener("drop", drop);
    window.addEventListener("paste", paste);
    return () => {
      window.removeEventListener("dragenter", enter);
      window.removeEventListener("dragover", over);
      window.removeEventListener("dragleave", leave);
      window.removeEventListener("drop", drop);
      window.removeEventListener("paste", paste);
    };
  }, []);

  return { dragging };
}

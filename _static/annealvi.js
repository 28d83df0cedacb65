// annealvi: every figure opens at full resolution in a new tab when clicked (multi-panel figures
// are drawn for a wider page than the text column; this is how a reader zooms in).
document.addEventListener("DOMContentLoaded", () => {
  for (const img of document.querySelectorAll(".bd-article figure img")) {
    if (img.closest("a")) continue;
    const link = document.createElement("a");
    link.href = img.currentSrc || img.src;
    link.target = "_blank";
    link.rel = "noopener";
    link.title = "Open the figure at full resolution";
    link.className = "annealvi-figure-link";
    img.parentNode.insertBefore(link, img);
    link.appendChild(img);
  }
});
